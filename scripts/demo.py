"""`make demo`: simulated radar data -> VAE -> user-ID-conditioned LDM -> samples of every user -> evaluation on
held-out real files -> the few-shot identification experiment, reduced.

    python scripts/demo.py                       # CPU: 32x32 spectrograms, tiny models, about 7 minutes on 2 cores
    python scripts/demo.py --profile realistic   # the same on the harder, more physical simulator profile
    python scripts/demo.py --device cuda         # GPU: 128x128, the microdoppler presets, longer training

Every stage is one of the project's own commands, run as a subprocess and echoed, so the demo doubles as a
walk-through: python -m ldm.radar.simulator, train_vae.py (which decides the split and writes vae/split.json),
train_ldm.py (which reuses it), sample.py, evaluate.py (which measures on the split's held-out test files only) and
fewshot.py, reduced: NOVEL further simulated people, never seen by the generator, are enrolled into it from k = 4
shots each and identified by every variant of docs/augmentation.md (one generator seed, a few shot draws; the full
protocol is fewshot.py on its own). Outputs go to runs/demo/ (runs/demo-realistic/ for --profile realistic; --out);
the closing report is report.md there, the sample grid samples_grid.png, the few-shot plot fewshot/fewshot.png.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ldm.fewshot import summary_markdown
from ldm.radar.physics import simulator_metadata
from ldm.radar.simulator import PROFILES
from ldm.cli import option, parse_config

ROOT = Path(__file__).resolve().parents[1]
USERS = 8
NOVEL = 4            # further people for the few-shot step: simulated with the same seed, so users 0-7 are the same

# Sizes per device. CPU: the simulator's 64x64 spectrograms resized to 32x32 (f = 2 -> 16x16x4 latents), so the whole
# demo fits 7 minutes on 2 cores. CUDA: 128x128 and the microdoppler presets (f = 8 -> 16x16x4 latents).
SETTINGS = {
    "cpu": {
        "sim_size": 64, "size": 32, "per_user": 48,
        # 800 steps with the EMA warm-up: the EMA weights reach 32.7 dB on the held-out val files (raw weights 30.3)
        # and keep identity (82% of reconstructions identified, 85% of the originals). Without the warm-up the EMA
        # still held 20% of its random initialisation at 1500 steps: 30.9 dB (raw 32.6).
        "vae": ["--preset", "tiny", "--steps", "800", "--batch-size", "16", "--lr", "5e-4", "--disc-weight", "0",
                "--no-eval-classifier"],
        # 1000 steps: identity accuracy on generated samples 86.7% on the held-out test files (600 steps: 67.6%)
        "ldm": ["--preset", "tiny", "--unet-channels", "32,64", "--unet-attention", "0,1", "--unet-heads", "4",
                "--context-dim", "64", "--steps", "1000", "--batch-size", "32", "--lr", "1e-3", "--ema-decay", "0.995",
                "--cache-latents", "--posterior", "mean"],
        "num": 32, "sample_steps": 25, "guidance": 3.0, "eval_epochs": 20,
        # the reduced few-shot protocol: one generator (this demo's), k = 4, 3 shot draws, 2 tuning draws; enrolment
        # and sampling as in the full protocol (fewshot.py's defaults: 100 steps, DPM-Solver++(2M) with 10 steps)
        "fewshot": ["--shots", "4", "--draws", "3", "--size", "32", "--samples", "32", "--test-per-person", "12",
                    "--tune-draws", "2", "--classic-multiples", "0,1,2", "--resamples", "1000"],
    },
    "cuda": {
        "sim_size": 128, "size": 128, "per_user": 64,
        "vae": ["--preset", "microdoppler", "--steps", "6000", "--batch-size", "16", "--disc-start", "3000"],
        "ldm": ["--preset", "microdoppler", "--steps", "20000", "--batch-size", "64", "--lr", "1e-4",
                "--cache-latents"],
        "num": 64, "sample_steps": 50, "guidance": 3.0, "eval_epochs": 30,
        "fewshot": ["--shots", "4", "--draws", "5", "--size", "128", "--samples", "64", "--test-per-person", "16"],
    },
}


@dataclass
class DemoConfig:
    device: str = option("cpu", "where to run, and with which sizes: cpu (32x32 images, tiny models, about 7 minutes "
                                "on 2 cores) or cuda (128x128, the microdoppler presets)", choices=tuple(SETTINGS))
    profile: str = option("classic", "simulator profile of the data (ldm.radar.simulator): classic (the evaluation CNN "
                                     "tells 8 people apart 95-99.5%% of the time) or realistic (ground contact, "
                                     "clutter and MTI, walks towards and away: 75%% for 10 people, as on real radar "
                                     "data)", choices=tuple(PROFILES))
    out: str | None = option(None, "output folder (default runs/demo, or runs/demo-<profile> for another profile)")
    seed: int = option(0, "seeds the simulator and every stage", at_least=0)


def run(command: list[str], timings: dict, name: str) -> None:
    print(f"\n$ {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT)
    timings[name] = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"demo: the {name} stage failed (exit status {result.returncode}); see its output above")


def last_eval(log: Path) -> dict:
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("eval")][-1]


def _value(cell: dict | None, percent: bool = True) -> str:
    """'77.0% [70.1, 83.0]' from {"value", "ci"} (a proportion), or '-' when missing."""
    if cell is None or cell.get("value") is None:
        return "-"
    low, high = cell["ci"]
    if percent:
        return f"{cell['value']:.1%} [{low:.1%}, {high:.1%}]"
    return f"{cell['value']:.3f} [{low:.3f}, {high:.3f}]"


def fewshot_section(f: dict) -> list[str]:
    """The report's few-shot section from fewshot.py's fewshot.json (the reduced protocol)."""
    novel, runs = f["people"]["novel"], f["rows"][0] if f["rows"] else {}
    lines = ["", "## A new person from 4 spectrograms (reduced few-shot protocol)", "",
             f"**Reduced protocol**: {len(novel)} novel people ({', '.join(novel)}) that the generator never saw, "
             f"{f['people']['test_per_person'][novel[0]]} scored test files each; one generator seed (this demo's "
             f"LDM, trained on the {len(f['people']['base'])} base people), {runs.get('draws', ['?'])[0]} shot "
             "draws, k = 4. Each draw enrols the novel people into the generator from the same 4 shots every "
             "variant gets. The full protocol (3 generator seeds, 20 draws, k = 1, 2, 4, 8) is `python fewshot.py`; "
             "docs/augmentation.md has its design and result. Brackets: 95% intervals resampling shot draws and "
             "test persons.", "",
             "Tables as `fewshot.py` writes them (`fewshot/fewshot.md`):", "",
             summary_markdown(f).rstrip("\n")]
    return lines


def write_report(out: Path, device: str, profile: str, evaluation: dict, fewshot: dict, vae_eval: dict,
                 timings: dict, guidance: float) -> Path:
    o, d, m = evaluation["overall"], evaluation["distances"], evaluation["memorisation"]
    users = len(evaluation["class_to_idx"])
    counts = evaluation["counts"]
    lines = [
        "# ldm demo report", "",
        f"Device settings `{device}`, simulator profile `{profile}`: {users} simulated people. The split was decided "
        "once by train_vae.py "
        f"(`vae/split.json`): the VAE and the LDM trained on {counts['real_generator_train']} files, and every real "
        f"figure below is measured on {counts['real_test']} held-out test files that no generator saw. "
        f"{counts['generated']} generated samples (guidance {guidance}). Brackets: 95% intervals (overall "
        "accuracies: bootstrap over persons; distances: bootstrap).", "",
        "## Identity", "",
        "| measure | generated | real |", "|---|---|---|",
        f"| identity accuracy (the real-trained classifier assigns the requested person) | "
        f"{_value(o['trts_accuracy'])} | {_value(o['real_test_accuracy'])} (held-out real test) |",
        f"| train on generated, test on real (TSTR) | {_value(o['tstr_accuracy'])} | |",
        f"| mean classifier confidence | {o['mean_confidence']:.3f} | |",
        f"| Frechet distance ({d['dims']}-d PCA of classifier features) | {_value(d['fd'], False)} | "
        f"{_value(d['fd_floor'], False)} (real-vs-real floor, same n) |",
        f"| KID | {_value(d['kid'], False)} | {_value(d['kid_floor'], False)} (floor) |", "",
        f"Chance is {1 / users:.1%}.", "",
        "## Memorisation", "",
        "Share of generated samples closer to their nearest generator-training image than 95% of real test images "
        "are (about 5% for a generator that does not copy):", "",
        "| space | generated | interval | copying suspected |", "|---|---|---|---|",
    ]
    for space in ("features", "pixels"):
        s = m[space]
        lines.append(f"| {space} | {s['fraction_closer']:.1%} | [{s['fraction_closer_ci'][0]:.1%}, "
                     f"{s['fraction_closer_ci'][1]:.1%}] | {'yes' if s['copying_suspected'] else 'no'} |")
    lines += fewshot_section(fewshot)
    lines += ["", "VAE reconstructions of the held-out val files: EMA weights (exported) PSNR "
              f"{vae_eval['ema']['psnr']:.2f} dB, "
              f"raw weights {vae_eval['raw']['psnr']:.2f} dB.", "",
              "## Per person", "", "| person | identity accuracy (generated) | real test accuracy | TSTR |",
              "|---|---|---|---|"]
    for user, row in evaluation["per_user"].items():
        lines.append(f"| {user} | {_value(row['trts_accuracy'])} | {_value(row['real_test_accuracy'])} | "
                     f"{_value(row['tstr_accuracy'])} |")
    lines += ["", "## Stage times (wall clock)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in timings.items()]
    lines += ["", "Files: `samples_grid.png` (one row per person), `evaluation.json`, `evaluation_confusion.png`, "
                  "`fewshot/fewshot.json`, `fewshot/fewshot.png`, `vae/` (with `split.json`), `ldm/pipeline/`.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def simulated(data: Path, profile: str, per_user: int, size: int, seed: int, users: int = USERS) -> bool:
    """Whether data/ already holds this simulation (an older metadata.json without a profile is the classic one)."""
    meta = simulator_metadata(data)
    return (meta is not None and meta.get("profile", {}).get("name", "classic") == profile and meta["size"] == size
            and meta["seed"] == seed and len(meta["samples"]) == users * per_user)


def main(argv: list[str] | None = None) -> int:
    args = parse_config(DemoConfig, argv, __doc__.split("\n\n")[0])
    cfg, py = SETTINGS[args.device], sys.executable
    default_out = "runs/demo" if args.profile == "classic" else f"runs/demo-{args.profile}"
    out = (ROOT / (args.out or default_out)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data, seed, timings, total = out / "data", str(args.seed), {}, time.perf_counter()
    # a rerun replaces the training runs: --overwrite moves the previous ones aside (OUT/vae.old-<time>), never deletes
    common = ["--device", args.device, "--seed", seed, "--no-progress", "--overwrite"]

    if not simulated(data, args.profile, cfg["per_user"], cfg["sim_size"], args.seed):
        run([py, "-m", "ldm.radar.simulator", "--out", str(data), "--profile", args.profile, "--users", str(USERS),
             "--per-user", str(cfg["per_user"]), "--size", str(cfg["sim_size"]), "--seed", seed, "--quiet",
             "--overwrite"], timings, "simulate")
    run([py, "train_vae.py", "--data", str(data), "--out", str(out / "vae"), "--size", str(cfg["size"]), *cfg["vae"],
         *common], timings, "train_vae")
    run([py, "train_ldm.py", "--data", str(data), "--vae", str(out / "vae"), "--out", str(out / "ldm"), *cfg["ldm"],
         "--sample-every", "1000000", "--sample-per-user", "8", *common], timings, "train_ldm")
    run([py, "sample.py", "--model", str(out / "ldm" / "pipeline"), "--user", "all", "--num", str(cfg["num"]),
         "--steps", str(cfg["sample_steps"]), "--guidance", str(cfg["guidance"]), "--batch-size", "32",
         "--out", str(out / "samples"), "--device", args.device, "--seed", seed, "--no-progress", "--overwrite"],
        timings, "sample")                                             # a rerun moves the old samples aside
    split = str(out / "vae" / "split.json")                            # decided by train_vae.py, reused by all
    run([py, "evaluate.py", "--real", str(data), "--split", split, "--generated", str(out / "samples"), "--out",
         str(out / "evaluation.json"), "--size", str(cfg["size"]), "--epochs", str(cfg["eval_epochs"]),
         "--seed", seed, "--quiet"], timings, "evaluate")
    # the few-shot step: the same simulation with NOVEL more people, whom this demo's generator never saw
    novel_data = out / "fewshot_data"
    if not simulated(novel_data, args.profile, cfg["per_user"], cfg["sim_size"], args.seed, USERS + NOVEL):
        run([py, "-m", "ldm.radar.simulator", "--out", str(novel_data), "--profile", args.profile, "--users",
             str(USERS + NOVEL), "--per-user", str(cfg["per_user"]), "--size", str(cfg["sim_size"]), "--seed", seed,
             "--quiet", "--overwrite"], timings, "simulate_novel")
    if (out / "fewshot").exists():                                     # a rerun: the previous one moves aside
        (out / "fewshot").rename(out / f"fewshot.old-{time.strftime('%Y%m%d-%H%M%S')}")
    run([py, "fewshot.py", "--data", str(novel_data), "--pipeline", str(out / "ldm" / "pipeline"), "--base-split",
         split, "--novel", str(NOVEL), "--generator-seeds", "1", "--out", str(out / "fewshot"), *cfg["fewshot"],
         "--no-progress"], timings, "fewshot")
    timings["total"] = time.perf_counter() - total

    evaluation = json.loads((out / "evaluation.json").read_text())
    fewshot = json.loads((out / "fewshot" / "fewshot.json").read_text())
    report = write_report(out, args.device, args.profile, evaluation, fewshot,
                          last_eval(out / "vae" / "log.jsonl"), timings, cfg["guidance"])
    o = evaluation["overall"]
    print(f"\ndemo finished in {timings['total'] / 60:.1f} min")
    print(f"  report       {report}\n  sample grid  {out / 'samples_grid.png'}\n"
          f"  few-shot     {out / 'fewshot' / 'fewshot.png'}")
    print(f"  identity accuracy on generated samples {_value(o['trts_accuracy'])} (real held-out "
          f"{_value(o['real_test_accuracy'])}, chance {1 / len(evaluation['class_to_idx']):.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
