"""A new person from k spectrograms: the fair few-shot identification experiment (docs/augmentation.md).

    python fewshot.py --out runs/fewshot                       # the full protocol on the realistic simulator profile
    python fewshot.py --out runs/fewshot --draws 5 --shots 4   # a reduced one (resume later with more)

People, not files, are split. Base people train the generator (train_vae.py, train_ldm.py), the embedding network
and the choice of classic augmentation; novel people are scored. For every generator seed, shot draw and k, each novel
person's k shots are drawn from their pool, the novel people are enrolled into the base generator from exactly those
shots (ldm.enrollment), and every variant (ldm.fewshot.VARIANTS) identifies the novel people's held-out test files:
real (k-shot CNN), classic (the same with augmentation tuned on base people), embedding (nearest class mean in a
network trained on base people), physics (nearest centroid of torso speed and cadence), real + enrolled and
embedding + enrolled (the same plus samples of the enrolled people), oracle (all the novel people's pool files: the
ceiling). A generator is used only if its provenance shows no test file and no novel file beyond the shots.

The primary contrast (fixed in ldm.fewshot before any run): embedding + enrolled minus the best non-generative variant
at k = 4. Intervals resample generator seeds, shot draws and test persons (ldm.metrics.hierarchical_bootstrap); every
other contrast is Holm-adjusted. Every finished unit is appended to OUT/units.jsonl, so a killed run continues where it
stopped; more --draws, --shots or --generator-seeds later add units. Writes OUT/fewshot.json, OUT/fewshot.png and
prints the table.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ldm import cli
from ldm.cli import option

FORMAT = "ldm-fewshot-1"
ROOT = Path(__file__).resolve().parent
# Options that may grow between runs into one OUT (they add units); every other option must stay as it was.
GROWABLE = ("shots", "draws", "generator_seeds", "progress", "threads", "resamples", "stop_after_seconds", "worker",
            "processes")


@dataclass
class FewShotConfig:
    out: str = option("runs/fewshot", "the experiment folder: data, generators, units.jsonl, fewshot.json/.png")
    data: str | None = option(None, "real data DIR/<person>/<files> with every person (base and novel); default: "
                                    "simulate OUT/data with --profile, --people, --per-user")
    profile: str = option("realistic", "simulator profile when simulating (ldm.radar.simulator)",
                          choices=("classic", "realistic"))
    people: int = option(32, "simulated people (base + novel)", at_least=3)
    per_user: int = option(48, "simulated spectrograms per person", at_least=4)
    sim_size: int = option(64, "simulated spectrogram size in pixels (then resized to --size)", at_least=16)
    sim_seed: int = option(0, "simulator seed", at_least=0)
    novel: int = option(8, "novel (scored) people; the rest are base people", at_least=1)
    test_per_person: int = option(12, "scored test files per novel person; the rest is the pool shots come from",
                                  at_least=1)
    split_seed: int = option(0, "seeds the people split, the novel files' split and the base split", at_least=0)
    pipeline: str | None = option(None, "use this trained base pipeline (train_ldm.py's OUT/pipeline) instead of "
                                        "training generators; its people are the base people, --base-split its "
                                        "split; one generator seed")
    base_split: str | None = option(None, "with --pipeline: the split.json of its run (base train/val files)")
    size: int = option(32, "image size the classifiers, the physics features and the generator work at", at_least=16)
    shots: str = option("1,2,4,8", "k: shots per novel person, a comma list")
    draws: int = option(20, "shot draws per k and generator seed", at_least=1)
    generator_seeds: int = option(3, "generator seeds (each trains its own VAE, LDM and embedding network)",
                                  at_least=1)
    vae_steps: int = option(800, "train_vae.py --steps for each generator (the demo's CPU recipe)", at_least=1)
    ldm_steps: int = option(1000, "train_ldm.py --steps for each generator", at_least=1)
    enroll_steps: int = option(100, "enrolment optimizer steps (ldm.enrollment.EnrollConfig)", at_least=1)
    enroll_lr: float = option(2e-2, "enrolment learning rate", above=0)
    samples: int = option(32, "generated samples per enrolled novel person", at_least=1)
    sampler: str = option("dpm++2m", "sampler of the enrolled people's samples (ldm.pipeline.make_sampler)",
                          choices=("ddim", "dpm++2m", "euler", "euler_a", "ddpm"))
    sample_steps: int = option(10, "sampler steps per sample", at_least=1)
    guidance: float = option(3.0, "classifier-free guidance scale", at_least=0)
    epochs: int = option(30, "classifier training epochs", at_least=1)
    min_steps: int = option(240, "classifier optimizer steps at least", at_least=1)
    classic_multiples: str = option("0,0.5,1,2", "classic augmentation amounts to choose from, in units of one "
                                                 "person's walk-to-walk spread (measured on base people)")
    tune_draws: int = option(3, "shot draws of base people per classic candidate", at_least=1)
    resamples: int = option(2000, "hierarchical bootstrap replicates", at_least=100)
    threads: int = option(1, "torch CPU threads", at_least=1)
    stop_after_seconds: float = option(0.0, "stop starting new units after this many seconds (0: never); a later "
                                            "run resumes", at_least=0)
    worker: str = option("0/1", "I/N: run only every N-th unit, starting at unit I, so N processes started with 0/N ... "
                                "N-1/N share one OUT (each appends its own finished units; run one of them again at "
                                "the end for the summary over all)")
    processes: int = option(1, "worker processes on this machine: this one and N-1 started with --worker i/N "
                               "(each logs to OUT/worker-i.log); one torch thread each is the right choice on N "
                               "cores", at_least=1)
    progress: bool = option(True, "show progress bars")


# ----------------------------------------------------------------------------------------------------------------
# Options and the experiment folder
# ----------------------------------------------------------------------------------------------------------------
def parse_list(text: str, flag: str, kind=int) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be a comma list of numbers, got {text!r}") from None
    if not values or len(set(values)) != len(values) or min(values) < 0:
        raise ValueError(f"{flag} must be a non-empty comma list of distinct non-negative numbers, got {text!r}")
    return values


def check_options(cfg: FewShotConfig) -> dict:
    """Every check that needs no data: parsed lists, --pipeline's companions, a writable OUT, and that OUT, if it
    holds an earlier run, was started with the same fixed options (GROWABLE ones may change)."""
    shots = parse_list(cfg.shots, "--shots")
    if min(shots) < 1:
        raise ValueError(f"--shots must all be >= 1, got {cfg.shots!r}")
    multiples = parse_list(cfg.classic_multiples, "--classic-multiples", float)
    try:
        worker, workers = (int(v) for v in cfg.worker.split("/"))
    except ValueError:
        raise ValueError(f"--worker must be I/N, e.g. 0/2, got {cfg.worker!r}") from None
    if not 0 <= worker < workers:
        raise ValueError(f"--worker {cfg.worker}: need 0 <= I < N")
    if cfg.processes > 1 and workers > 1:
        raise ValueError(f"--processes {cfg.processes} starts its own workers; leave out --worker {cfg.worker}")
    if (cfg.pipeline is None) != (cfg.base_split is None):
        raise ValueError("--pipeline and --base-split go together (a trained base pipeline and its run's split.json)")
    if cfg.pipeline is not None and cfg.generator_seeds != 1:
        raise ValueError("--pipeline gives one generator; use --generator-seeds 1")
    if cfg.data is not None and not Path(cfg.data).is_dir():
        raise FileNotFoundError(f"--data {cfg.data}: no such folder")
    out = Path(cfg.out)
    for flag, given in (("--data", cfg.data), ("--pipeline", cfg.pipeline)):
        if given is not None and (out.resolve() == Path(given).resolve() or Path(given).resolve() in
                                  out.resolve().parents):
            raise ValueError(f"--out {out} is or lies in {flag} {given}: the experiment's files would land among "
                             "its inputs")
    cli.check_writable(out)
    saved = out / "config.json"
    if saved.is_file():
        before = json.loads(saved.read_text())
        changed = [k for k, v in asdict(cfg).items() if k not in GROWABLE and before.get(k) != v]
        if changed:
            raise ValueError(f"{out} holds a run started with other options ({', '.join('--' + c.replace('_', '-') for c in changed)}); "
                             "use a new --out, or the same options (only --shots, --draws, --generator-seeds may grow)")
    return {"shots": shots, "multiples": multiples, "worker": (worker, workers)}


def write_json(path: Path, value) -> None:
    from ldm.files import atomic_write
    from ldm.metrics import json_safe
    text = json.dumps(json_safe(value), indent=1, allow_nan=False)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_units(path: Path) -> list[dict]:
    """The finished units of units.jsonl; a last line cut short by a kill is ignored (that unit runs again)."""
    if not path.is_file():
        return []
    units = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            units.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return units


def append_unit(path: Path, unit: dict) -> None:
    """Append one finished unit as a JSON line with one write (O_APPEND: lines of several workers never interleave),
    fsynced before the next unit starts."""
    from ldm.metrics import json_safe
    line = (json.dumps(json_safe(unit), allow_nan=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def stage(command: list[str], what: str, threads: int) -> None:
    """Run one of the project's commands with ``threads`` CPU threads, echoed; a failure stops the experiment naming
    the stage."""
    import shlex
    print(f"\n$ {shlex.join(command)}", flush=True)
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if result.returncode != 0:
        raise cli.RunError(f"{what} failed (exit status {result.returncode}); see its output above")


# ----------------------------------------------------------------------------------------------------------------
# Data, people and the base generator
# ----------------------------------------------------------------------------------------------------------------
def prepare_data(cfg: FewShotConfig, out: Path) -> Path:
    """The real data folder: --data, or OUT/data simulated once."""
    if cfg.data is not None:
        return Path(cfg.data)
    data = out / "data"
    meta_path = data / "metadata.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        made = (len(meta.get("people", [])), len(meta.get("samples", [])), meta.get("size"), meta.get("seed"),
                meta.get("profile", {}).get("name", "classic"))
        wanted = (cfg.people, cfg.people * cfg.per_user, cfg.sim_size, cfg.sim_seed, cfg.profile)
        if made != wanted:
            raise ValueError(f"{data} holds another simulation (people, samples, size, seed, profile = {made}); "
                             f"the options ask for {wanted}")
    else:
        from ldm.radar.simulator import write_dataset
        write_dataset(data, users=cfg.people, per_user=cfg.per_user, size=cfg.sim_size, seed=cfg.sim_seed,
                      overwrite=data.exists(), progress=cfg.progress, profile=cfg.profile)
    return data


def prepare_people(cfg: FewShotConfig, out: Path, data: Path) -> dict:
    """people.json: base and novel people, the novel people's pool and test files, and the base people's split
    (train: generator, embedding and tuning shots; val: tuning scores; test: unused). Decided once, then reread."""
    from ldm.data import relative_names, scan_folder
    from ldm.splits import make_split, read_split
    from ldm.fewshot import split_novel_files, split_people
    path = out / "people.json"
    if path.is_file():
        return json.loads(path.read_text())
    files, labels, class_to_idx = scan_folder(data)
    names = relative_names(data, files)
    people = sorted(class_to_idx)
    if cfg.pipeline is not None:
        from ldm.pipeline import Pipeline
        base = sorted(Pipeline.from_pretrained(cfg.pipeline).users)
        unknown = [p for p in base if p not in people]
        if unknown:
            raise ValueError(f"--pipeline knows the person {unknown[0]}, who has no folder in --data {data}")
        candidates = [p for p in people if p not in base]
        if len(candidates) < cfg.novel:
            raise ValueError(f"--data {data} holds {len(candidates)} people the pipeline does not know; --novel asks "
                             f"for {cfg.novel}")
        novel = sorted(np.random.default_rng([cfg.split_seed, 7]).permutation(candidates)[:cfg.novel].tolist())
        split = read_split(cfg.base_split)
        base_split = {part: [n for n in split[part] if n.split("/")[0] in base] for part in ("train", "val", "test")}
        missing = [n for n in base_split["train"] + base_split["val"] if n not in set(names)]
        if missing:
            raise ValueError(f"--base-split names {missing[0]}, which is not in --data {data}")
    else:
        base, novel = split_people(people, cfg.novel, cfg.split_seed)
        base_split = None
    by_person = {p: [n for n in names if n.split("/")[0] == p] for p in novel}
    from ldm.splits import recording_groups
    groups = recording_groups(data, names)
    pool, test = split_novel_files(by_person, cfg.test_per_person, cfg.split_seed,
                                   dict(zip(names, groups)) if groups else None)
    if base_split is None:
        base_data = out / "base_data"                                    # the base people only, linked
        base_data.mkdir(parents=True, exist_ok=True)
        for person in base:
            link = base_data / person
            if not link.exists():
                link.symlink_to((data / person).resolve(), target_is_directory=True)
        if (data / "metadata.json").is_file():
            shutil.copyfile(data / "metadata.json", base_data / "metadata.json")
        split = make_split(base_data, test_fraction=0.125, val_fraction=0.125, seed=cfg.split_seed)   # sessions kept
        from ldm.splits import write_split
        write_split(out / "base_split.json", split)
        base_split = {part: split[part] for part in ("train", "val", "test")}
    people_record = {"base": base, "novel": novel, "pool": pool, "test": test, "base_split": base_split}
    write_json(path, people_record)
    return people_record


def train_generator(cfg: FewShotConfig, out: Path, seed: int) -> Path:
    """OUT/gen-<seed>/: train_vae.py and train_ldm.py on the base people (the base split's train files), resumed
    where a killed run left them. Returns the pipeline folder."""
    from ldm.cli import size_text
    folder, py = out / f"gen-{seed}", sys.executable
    for name, done in (("vae", folder / "vae.done"), ("ldm", folder / "ldm.done")):
        if done.is_file():
            continue
        run = folder / name
        if (run / "checkpoint.pt").is_file():
            where = ["--resume", str(run)]
        else:
            where = ["--out", str(run), "--overwrite", "--seed", str(seed), "--device", "cpu"]
        if name == "vae":
            command = [py, "train_vae.py", "--data", str(out / "base_data"), "--split", str(out / "base_split.json"),
                       "--size", size_text(cfg.size, cfg.size), "--preset", "tiny", "--steps", str(cfg.vae_steps),
                       "--batch-size", "16", "--lr", "5e-4", "--disc-weight", "0", "--no-eval-classifier"]
        else:
            command = [py, "train_ldm.py", "--data", str(out / "base_data"), "--vae", str(folder / "vae"),
                       "--preset", "tiny", "--unet-channels", "32,64", "--unet-attention", "0,1", "--unet-heads", "4",
                       "--context-dim", "64", "--steps", str(cfg.ldm_steps), "--batch-size", "32", "--lr", "1e-3",
                       "--ema-decay", "0.995", "--cache-latents", "--posterior", "mean", "--sample-every", "1000000"]
        if where[0] == "--resume":
            command = [py, command[1], *where]
        else:
            command += where
        stage(command + ["--no-progress"], f"training the seed-{seed} generator ({command[1]})", cfg.threads)
        done.write_text("done\n")
    return folder / "ldm" / "pipeline"


def load_base_pipeline(cfg: FewShotConfig, folder: Path, base_train: list[str]):
    """The base pipeline, with its provenance. A pipeline folder without provenance.json is accepted only when this
    experiment trained it itself (then its training files are the base split's train files)."""
    from ldm.pipeline import Pipeline, file_record
    pipe = Pipeline.from_pretrained(folder)
    if pipe.provenance is None and cfg.pipeline is None:
        pipe.provenance = {"trained_on": file_record(base_train), "enrolled": {}}
    return pipe


# ----------------------------------------------------------------------------------------------------------------
# The experiment
# ----------------------------------------------------------------------------------------------------------------
def run(cfg: FewShotConfig) -> int:
    """The experiment in this process (--worker I/N: its share of it), or with --processes N in N processes: this
    one as worker 0/N and N-1 started as workers 1/N ... (each logging to OUT/worker-i.log); when all have finished,
    the summary over every unit."""
    started = time.perf_counter()
    if cfg.processes == 1:
        return experiment(cfg, started)
    check_options(cfg)
    import multiprocessing
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")                # no fork of a process that may hold torch threads
    children = []
    for i in range(1, cfg.processes):
        child = replace(cfg, worker=f"{i}/{cfg.processes}", processes=1, progress=False)
        children.append((context.Process(target=worker_process, args=(child, str(out / f"worker-{i}.log"))),
                         out / f"worker-{i}.log"))
        children[-1][0].start()
    first = replace(cfg, worker=f"0/{cfg.processes}", processes=1)
    try:
        experiment(first, started, summary=False)
    except BaseException:                       # the others may be waiting for a file this one would have made
        for child, _ in children:
            child.terminate()
        raise
    finally:
        for child, _ in children:
            child.join()
    failed = [str(log) for child, log in children if child.exitcode != 0]
    if failed:
        raise cli.RunError(f"a worker process failed; see {failed[0]} (rerun the same command: finished units are kept)")
    return experiment(first, started)


def worker_process(cfg: FewShotConfig, log: str) -> None:
    """A worker started by --processes: its output goes to ``log``; a failure exits non-zero."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    sys.exit(cli.run_main(lambda c: experiment(c, summary=False), cfg, prog=f"fewshot.py --worker {cfg.worker}"))


def experiment(cfg: FewShotConfig, started: float | None = None, summary: bool = True) -> int:
    """This worker's units (all of them with --worker 0/1), then, if ``summary``, the summary over every finished
    unit in OUT. ``started``: the experiment's start (perf_counter) for its recorded wall time."""
    started = time.perf_counter() if started is None else started
    lists = check_options(cfg)
    import torch
    from tqdm import tqdm

    from ldm import fewshot as fs
    from ldm.data import SpectrogramFolder, relative_names
    from ldm.enrollment import EnrollConfig, enroll
    from ldm.radar.augment import ClassicAugment
    from ldm.radar.identity import ClassifierConfig, load_classifier, predict, save_classifier, train_classifier
    from ldm.radar.physics import batch_physics_features, simulator_metadata, spectrogram_axes
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    worker, workers = lists["worker"]

    def wait_for(*paths: Path) -> None:
        """Wait for what another worker decides or trains once (people, tuning, models, generators)."""
        missing = [p for p in paths if not p.exists()]
        if missing:
            print(f"worker {worker}/{workers}: waiting for {missing[0]} (another worker makes it)", flush=True)
        while not all(p.exists() for p in paths):
            time.sleep(10)

    # ---- data and people ------------------------------------------------------------------------------------------
    if worker > 0:
        wait_for(out / "people.json")
    data = prepare_data(cfg, out)
    people = prepare_people(cfg, out, data)
    if worker == 0:
        write_json(out / "config.json", asdict(cfg))
    meta = simulator_metadata(data)
    dynamic_range = meta["radar"]["dynamic_range_db"] if meta and "radar" in meta else 50.0
    axes = spectrogram_axes(meta, cfg.size, cfg.size)
    if axes is None:
        raise ValueError(f"{data}: no metadata.json with the velocity and time axes; the physics variant needs them")
    novel, base = people["novel"], people["base"]

    def load(names: list[str], class_to_idx: dict[str, int]):
        folder = SpectrogramFolder(data, size=cfg.size, subset=names, dynamic_range_db=dynamic_range,
                                   class_to_idx=class_to_idx, cache=True)
        x, y = folder.tensors()
        return x, y, relative_names(data, folder.files)

    from ldm.data import scan_folder
    _, _, folder_map = scan_folder(data)
    novel_names = [n for p in novel for n in people["pool"][p] + people["test"][p]]
    x_novel, y_full, names_novel = load(novel_names, folder_map)
    to_novel = {folder_map[p]: i for i, p in enumerate(novel)}
    y_novel = torch.tensor([to_novel[int(y)] for y in y_full])
    physics_novel = fs.physics_vectors(batch_physics_features(x_novel, axes, dynamic_range))
    test_files = sorted(n for p in novel for n in people["test"][p])
    data_novel = fs.NovelData(x_novel, y_novel, names_novel, physics_novel, test_files)
    x_base, y_base_full, names_base = load(people["base_split"]["train"], folder_map)
    to_base = {folder_map[p]: i for i, p in enumerate(base)}
    y_base = torch.tensor([to_base[int(y)] for y in y_base_full])
    x_val, y_val_full, _ = load(people["base_split"]["val"], folder_map)
    y_val = torch.tensor([to_base[int(y)] for y in y_val_full])

    # ---- base people's walk-to-walk spread: the physics variant's units and classic augmentation's amounts --------
    base_physics = fs.physics_vectors(batch_physics_features(x_base, axes, dynamic_range))
    spread = within_person_std(base_physics, y_base.numpy())                 # (2,) m/s and steps/s
    velocities, _ = axes
    span = float(abs(velocities[0] - velocities[-1]) * len(velocities) / (len(velocities) - 1))   # m/s, all rows
    mean_speed, mean_cadence = np.nanmean(base_physics, axis=0)
    clf = ClassifierConfig(num_classes=len(novel), image_size=cfg.size, epochs=cfg.epochs, min_steps=cfg.min_steps)

    def classic_for(multiple: float) -> ClassicAugment:
        """Amounts of `multiple` walk-to-walk spreads: Doppler shift and drift in rows, Doppler scale (relative speed)
        and time scale (relative cadence); 3 dB gain jitter."""
        return ClassicAugment(time_scale=min(0.45, multiple * spread[1] / mean_cadence),
                              doppler_shift=min(0.45, multiple * spread[0] / span),
                              doppler_scale=min(0.45, multiple * spread[0] / mean_speed),
                              doppler_disturbance=min(0.45, multiple * spread[0] / 2 / span),
                              gain_db=3.0, dynamic_range_db=dynamic_range)

    # With several workers, worker 1 (the helper) tunes classic augmentation and trains the embedding and oracle
    # networks while worker 0 trains the generator; everyone else waits for their files.
    helper = 1 if workers > 1 else 0
    tuning_path = out / "classic_tuning.json"
    if worker == helper and not tuning_path.is_file():
        write_json(tuning_path, tune_classic(cfg, lists["multiples"], classic_for, x_base, y_base, names_base, x_val,
                                             y_val, base))

    # ---- the generators: seed s is trained by worker s mod N, so N workers train N of them at once -----------------
    seeds = list(range(cfg.generator_seeds))
    if not cfg.pipeline:
        for seed in seeds:
            if seed % workers == worker:
                train_generator(cfg, out, seed)

    # ---- units: (generator seed, shot draw, k) --------------------------------------------------------------------
    units_path = out / "units.jsonl"
    done = {(u["seed"], u["draw"], u["shots"]) for u in read_units(units_path) if u["kind"] == "unit"}
    oracle_done = {u["seed"] for u in read_units(units_path) if u["kind"] == "oracle"}
    # k = 4 (the primary contrast's) first in every draw, so a run stopped early has the most of it
    shot_order = sorted(lists["shots"], key=lambda k: (k != fs.PRIMARY_SHOTS, k))
    everything = [(s, d, k) for s in seeds for d in range(cfg.draws) for k in shot_order]
    todo = [u for i, u in enumerate(everything) if i % workers == worker and u not in done]
    pool_rows = data_novel.rows(fs.allowed_files("oracle", people["pool"], people["pool"]))
    real_stats = person_feature_stats(batch_physics_features(data_novel.x[pool_rows], axes, dynamic_range),
                                      data_novel.labels[pool_rows].numpy(), len(novel))
    bar = tqdm(total=len(todo), desc="few-shot units", disable=not cfg.progress)
    stopped = False
    for seed in seeds:
        mine = [t for t in todo if t[0] == seed]
        if not mine and seed in oracle_done:
            continue
        if cfg.stop_after_seconds and time.perf_counter() - started > cfg.stop_after_seconds:
            stopped = True
            break
        folder = out / f"gen-{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        embedding_path, oracle_path = folder / "embedding.safetensors", folder / "oracle.safetensors"
        if worker == helper and not embedding_path.is_file():      # the network trained on the base people
            embedding = train_classifier(x_base, y_base, ClassifierConfig(num_classes=len(base), image_size=cfg.size,
                                                                          epochs=cfg.epochs, min_steps=cfg.min_steps,
                                                                          seed=seed))
            save_classifier(embedding, str(embedding_path), {p: i for i, p in enumerate(base)},
                            trained_on={"files": sorted(names_base)})
        if worker == helper and not oracle_path.is_file():         # the ceiling: all of the novel people's pool
            oracle = train_classifier(data_novel.x[pool_rows], data_novel.labels[pool_rows], fs.with_seed(clf, seed))
            save_classifier(oracle, str(oracle_path), {p: i for i, p in enumerate(novel)},
                            trained_on={"files": sorted(data_novel.names[i] for i in pool_rows.tolist())})
        wait_for(tuning_path, embedding_path, oracle_path, *([] if cfg.pipeline else [folder / "ldm.done"]))
        tuning = json.loads(tuning_path.read_text())
        classic = classic_for(tuning["chosen_multiple"])
        embedding, _ = load_classifier(str(embedding_path))
        oracle, _ = load_classifier(str(oracle_path))
        pipe = load_base_pipeline(cfg, Path(cfg.pipeline) if cfg.pipeline else folder / "ldm" / "pipeline",
                                  people["base_split"]["train"])
        if seed not in oracle_done and worker == 0:
            scored = fs.score_unit(data_novel, {p: [] for p in novel}, people["pool"], fs.with_seed(clf, seed),
                                   classic, embedding, spread, None, variants=(fs.CEILING,))
            append_unit(units_path, {"kind": "oracle", "seed": seed, **per_person(scored, len(novel))})
        for _, draw, k in mine:
            if cfg.stop_after_seconds and time.perf_counter() - started > cfg.stop_after_seconds:
                stopped = True
                break
            unit_start = time.perf_counter()
            bar.set_postfix(seed=seed, draw=draw, k=k)
            shots = fs.draw_shots(people["pool"], k, draw)
            shot_tensors = {p: data_novel.x[data_novel.rows(shots[p])] for p in novel}
            enrolled = enroll(pipe, shot_tensors, shots,
                              EnrollConfig(steps=cfg.enroll_steps, lr=cfg.enroll_lr, batch_size=32,
                                           seed=seed * 1_000_003 + draw * 101 + k), progress=False)
            fs.check_generator(enrolled.provenance, test_files, shots)         # before sampling (score_unit again)
            ids = [enrolled.embedder.class_to_idx[p] for p in novel]
            images = enrolled.generate(ids, num=cfg.samples, steps=cfg.sample_steps, sampler=cfg.sampler,
                                       guidance=cfg.guidance,
                                       seed=seed * 1_000_003 + draw * 101 + k, batch_size=64, progress=False)
            x_gen = torch.cat([images[i] for i in ids])
            y_gen = torch.cat([torch.full((cfg.samples,), j) for j in range(len(novel))])
            gen_features = batch_physics_features(x_gen, axes, dynamic_range)
            generated = fs.Generated(x_gen, y_gen, fs.physics_vectors(gen_features), enrolled.provenance)
            scored = fs.score_unit(data_novel, shots, people["pool"], fs.with_seed(clf, seed * 1000 + draw),
                                   classic, embedding, spread, generated,
                                   variants=tuple(v for v in fs.VARIANTS if v != fs.CEILING))
            identified = predict(oracle, x_gen)[0].argmax(1).numpy()
            append_unit(units_path, {
                "kind": "unit", "seed": seed, "draw": draw, "shots": k, **per_person(scored, len(novel)),
                "shot_files": shots, "trained_on": scored["trained_on"],
                "samples_identified": [int((identified[y_gen.numpy() == j] == j).sum()) for j in range(len(novel))],
                "samples_per_person": cfg.samples,
                "generated_physics": person_feature_stats(gen_features, y_gen.numpy(), len(novel)),
                "seconds": time.perf_counter() - unit_start})
            bar.update()
        if stopped:
            break
    bar.close()
    if not summary:
        return 0

    # ---- summary -------------------------------------------------------------------------------------------------
    units = read_units(units_path)
    tuning = json.loads(tuning_path.read_text()) if tuning_path.is_file() else {}
    classic = classic_for(tuning["chosen_multiple"]) if tuning else None
    result = summarise(units, novel, people, cfg, tuning, real_stats)
    result.update({"format": FORMAT, "settings": asdict(cfg), "data": str(data),
                    "people": {"base": base, "novel": novel,
                               "pool_per_person": {p: len(v) for p, v in people["pool"].items()},
                               "test_per_person": {p: len(v) for p, v in people["test"].items()}},
                    "walk_to_walk_spread": {"torso_speed_mps": spread[0], "cadence_steps_per_s": spread[1]},
                    "classic_augment": asdict(classic) if classic else None, "stopped_early": stopped,
                    "seconds_this_run": time.perf_counter() - started})
    write_json(out / "fewshot.json", result)
    if result["rows"]:
        plot(result, out / "fewshot.png")
        from ldm.files import atomic_write
        text = fs.summary_markdown(result)
        atomic_write(out / "fewshot.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    print_report(result)
    return 0


def within_person_std(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(D,) pooled within-person standard deviation of values (N, D), NaN-ignoring: sqrt(sum of squares about each
    person's mean / (count - persons))."""
    out = []
    for column in values.T:
        finite = np.isfinite(column)
        groups = [column[finite & (labels == c)] for c in np.unique(labels)]
        groups = [g for g in groups if len(g)]
        squares = sum(float(((g - g.mean()) ** 2).sum()) for g in groups)
        out.append((squares / max(1, sum(len(g) for g in groups) - len(groups))) ** 0.5)
    return np.array(out)


def tune_classic(cfg, multiples, classic_for, x_base, y_base, names_base, x_val, y_val, base) -> dict:
    """Choose classic augmentation's amount on base people only: for each candidate multiple, k = 4 shots per base
    person drawn from the base train files (cfg.tune_draws draws), a classifier trained with that augmentation,
    accuracy on the base people's val files. The best mean wins (ties: the smaller amount)."""
    import torch

    from ldm.fewshot import PRIMARY_SHOTS, draw_shots
    from ldm.radar.identity import ClassifierConfig, predict, train_classifier
    by_person = {p: [n for n in names_base if n.split("/")[0] == p] for p in base}
    where = {n: i for i, n in enumerate(names_base)}
    clf = ClassifierConfig(num_classes=len(base), image_size=cfg.size, epochs=cfg.epochs, min_steps=cfg.min_steps)
    scores = {}
    for multiple in multiples:
        accuracies = []
        for draw in range(cfg.tune_draws):
            shots = draw_shots(by_person, PRIMARY_SHOTS, 10_000 + draw)
            rows = torch.tensor([where[n] for p in base for n in shots[p]])
            model = train_classifier(x_base[rows], y_base[rows], ClassifierConfig(**{**asdict(clf), "seed": draw}),
                                     augment=classic_for(multiple) if multiple > 0 else None)
            accuracies.append(float((predict(model, x_val)[0].argmax(1) == y_val).float().mean()))
        scores[multiple] = float(np.mean(accuracies))
        print(f"classic tuning on base people: {multiple:g} x walk-to-walk spread -> val accuracy {scores[multiple]:.3f}",
              flush=True)
    best = max(sorted(scores), key=lambda m: (scores[m], -m))
    return {"chosen_multiple": best, "val_accuracy": {str(m): s for m, s in scores.items()},
            "rule": f"k = {PRIMARY_SHOTS} shots per base person from the base train files, {cfg.tune_draws} draws, "
                    "accuracy on the base people's val files; the best mean wins"}


def per_person(scored: dict, num_classes: int) -> dict:
    from ldm.fewshot import per_person_hits
    labels = scored["labels"]
    return {"hits": {v: per_person_hits(p, labels, num_classes) for v, p in scored["predictions"].items()},
            "totals": [int(np.sum(np.asarray(labels) == c)) for c in range(num_classes)]}


def person_feature_stats(features: list[dict], labels: np.ndarray, num_classes: int) -> dict:
    """{feature: {"mean": (P,), "std": (P,)}} over each person's samples (torso speed as |v|), NaN-ignoring."""
    from ldm.fewshot import PHYSICS_TABLE_KEYS
    out = {}
    for key in PHYSICS_TABLE_KEYS:
        source = "torso_velocity_mps" if key == "torso_speed_mps" else key
        values = np.array([abs(f[source]) if key == "torso_speed_mps" else f[source] for f in features])
        out[key] = {"mean": [float(np.nanmean(values[labels == c])) for c in range(num_classes)],
                    "std": [float(np.nanstd(values[labels == c], ddof=1)) for c in range(num_classes)]}
    return out


# ----------------------------------------------------------------------------------------------------------------
# Statistics, fixed before the run (docs/augmentation.md)
# ----------------------------------------------------------------------------------------------------------------
def summarise(units: list[dict], novel: list[str], people: dict, cfg, tuning: dict, real_stats: dict | None) -> dict:
    """Accuracies with hierarchical-bootstrap intervals per (k, variant); the primary contrast; the secondary
    contrasts (every generative minus every non-generative variant at every k) Holm-adjusted; identity of the
    enrolled samples clustered by person; the physics table (generated over real, per feature)."""
    from ldm import fewshot as fs
    from ldm.metrics import (accuracy_estimate, bootstrap_p_value, clustered_proportion, hierarchical_bootstrap,
                             holm_adjust, holm_levels, percentile_interval, unit_interval)
    P = len(novel)
    runs = [u for u in units if u["kind"] == "unit"]
    oracles = {u["seed"]: u for u in units if u["kind"] == "oracle"}
    result = {"rows": [], "primary": None, "secondary": [], "identity_of_samples": [], "physics_table": [],
              "design": {"primary": f"{fs.PRIMARY_VARIANT} minus the best non-generative variant at k = "
                                    f"{fs.PRIMARY_SHOTS}",
                         "resampling": "generator seeds, then shot draws within a seed, then test persons "
                                       "(clusters of their test files)",
                         "secondary": "every generative minus every non-generative variant at every k, "
                                      "Holm-adjusted (alpha 0.05)"},
              "classic_tuning": tuning, "units": len(runs)}
    if not runs:
        return result
    totals = runs[0]["totals"]
    variants = [v for v in fs.VARIANTS if v != fs.CEILING]
    replicates, estimates, ran = {}, {}, {}
    for k in sorted({u["shots"] for u in runs}):
        hits = []
        for seed in sorted({u["seed"] for u in runs if u["shots"] == k}):
            own = sorted((u for u in runs if u["shots"] == k and u["seed"] == seed), key=lambda u: u["draw"])
            hits.append(np.array([[[u["hits"][v][p] for v in variants] for p in range(P)] for u in own]))
        replicates[k] = hierarchical_bootstrap(hits, totals, cfg.resamples, seed=k)       # (R, V)
        estimates[k] = accuracy_estimate(hits, totals)
        ran[k] = {"seeds": len(hits), "draws": [len(h) for h in hits]}
        for j, v in enumerate(variants):
            low, high = unit_interval(*percentile_interval(replicates[k][:, j]))
            result["rows"].append({"shots": k, "variant": v, "accuracy": float(estimates[k][j]),
                                   "ci": [low, high], **ran[k]})
    if oracles:
        hits = [np.array([[[o["hits"]["oracle"][p]] for p in range(P)]]) for o in oracles.values()]
        boot = hierarchical_bootstrap(hits, totals, cfg.resamples, seed=99)[:, 0]
        result["oracle"] = {"accuracy": float(accuracy_estimate(hits, totals)[0]),
                            "ci": list(unit_interval(*percentile_interval(boot))), "seeds": len(hits),
                            "pool_files_per_person": len(next(iter(people["pool"].values())))}

    def contrast(k: int, a: str, b: str, level: float = 0.95) -> dict:
        d = replicates[k][:, variants.index(a)] - replicates[k][:, variants.index(b)]
        low, high = percentile_interval(d, level)
        return {"shots": k, "variant": a, "against": b,
                "difference": float(estimates[k][variants.index(a)] - estimates[k][variants.index(b)]),
                "ci": [max(low, -1.0), min(high, 1.0)], "level": level, "p": bootstrap_p_value(d)}

    primary_key = None
    if fs.PRIMARY_SHOTS in replicates:
        k = fs.PRIMARY_SHOTS
        best = max(fs.NON_GENERATIVE, key=lambda v: estimates[k][variants.index(v)])
        result["primary"] = {**contrast(k, fs.PRIMARY_VARIANT, best), "best_non_generative": best, **ran[k]}
        primary_key = (k, fs.PRIMARY_VARIANT, best)
    family = [(k, a, b) for k in sorted(replicates) for a in fs.GENERATIVE for b in fs.NON_GENERATIVE
              if (k, a, b) != primary_key]
    if family:
        raw = [contrast(*c) for c in family]
        adjusted, levels = holm_adjust([r["p"] for r in raw]), holm_levels([r["p"] for r in raw])
        for c, r, p_adj, level in zip(family, raw, adjusted, levels):
            result["secondary"].append({**contrast(*c, level=float(level)), "p_holm": float(p_adj),
                                        "holm_rejects": bool(p_adj < 0.05)})
    # identity of the enrolled samples (the oracle classifier, trained on the pool files, names their person)
    for k in sorted(replicates):
        own = [u for u in runs if u["shots"] == k]
        hits = np.sum([u["samples_identified"] for u in own], axis=0)
        value, low, high = clustered_proportion(hits, np.full(P, len(own) * own[0]["samples_per_person"]),
                                                cfg.resamples, seed=k)
        result["identity_of_samples"].append({"shots": k, "accuracy": value, "ci": [low, high], "units": len(own),
                                              "chance": 1 / P})
    # physics: generated over real, per feature (median over novel persons of the unit means)
    if real_stats is not None:
        for k in sorted(replicates):
            own = [u for u in runs if u["shots"] == k]
            for key in real_stats:
                real_mean, real_std = np.array(real_stats[key]["mean"]), np.array(real_stats[key]["std"])
                gen_mean = np.nanmean([u["generated_physics"][key]["mean"] for u in own], axis=0)
                gen_std = np.nanmean([u["generated_physics"][key]["std"] for u in own], axis=0)
                result["physics_table"].append({
                    "shots": k, "feature": key, "real_std_median": float(np.nanmedian(real_std)),
                    "std_ratio_median": float(np.nanmedian(gen_std / real_std)),
                    "mean_offset_in_real_std_median": float(np.nanmedian(np.abs(gen_mean - real_mean) / real_std))})
    return result


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------
def print_report(summary: dict) -> None:
    print(f"\n{'k':>3}  {'variant':<20}{'accuracy':>9}  95% interval      runs")
    for r in summary["rows"]:
        print(f"{r['shots']:>3}  {r['variant']:<20}{r['accuracy']:>9.3f}  [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]    "
              f"{r['seeds']} seed(s) x {r['draws']} draw(s)")
    if summary.get("oracle"):
        o = summary["oracle"]
        print(f"  -  {'oracle (ceiling)':<20}{o['accuracy']:>9.3f}  [{o['ci'][0]:.3f}, {o['ci'][1]:.3f}]")
    p = summary.get("primary")
    if p:
        print(f"\nprimary contrast at k = {p['shots']}: {p['variant']} - {p['against']} (the best non-generative) = "
              f"{p['difference']:+.3f} [{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}] (95%, p = {p['p']:.3f})")
    for s in summary["secondary"]:
        print(f"  k={s['shots']} {s['variant']} - {s['against']}: {s['difference']:+.3f} "
              f"[{s['ci'][0]:+.3f}, {s['ci'][1]:+.3f}] ({s['level']:.4f}), Holm p = {s['p_holm']:.3f}")
    for r in summary["identity_of_samples"]:
        print(f"enrolled samples identified as their person (k = {r['shots']}): {r['accuracy']:.3f} "
              f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] (chance {r['chance']:.3f}; person-clustered)")


def plot(summary: dict, path: Path) -> None:
    """Left: accuracy against k per variant with 95% bands, the oracle as a dashed ceiling line. Right: the
    generative variants minus the best non-generative variant at each k, with 95% paired-difference bands."""
    from PIL import Image, ImageDraw

    from ldm import fewshot as fs
    from ldm.files import atomic_write
    colours = {"real": (90, 90, 90), "classic": (148, 103, 189), "embedding": (31, 119, 180),
               "physics": (44, 160, 44), "real+enrolled": (255, 127, 14), "embedding+enrolled": (214, 39, 40)}
    image = Image.new("RGB", (1000, 440), "white")
    draw = ImageDraw.Draw(image)
    shots = sorted({r["shots"] for r in summary["rows"]})

    def panel(left, right, top, bottom, lo, hi):
        draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
        for frac in (0, 0.5, 1):
            draw.text((left - 40, bottom - frac * (bottom - top) - 6), f"{lo + frac * (hi - lo):+.2f}", fill=(0, 0, 0))
        for k in shots:
            x = left + (shots.index(k) + 0.5) / len(shots) * (right - left)
            draw.text((x - 4, bottom + 6), str(k), fill=(0, 0, 0))
        return lambda k, v: (left + (shots.index(k) + 0.5) / len(shots) * (right - left),
                             bottom - (min(max(v, lo), hi) - lo) / (hi - lo) * (bottom - top))

    def series(point, rows, value, band, colour, dashed=False):
        pts = [point(r["shots"], value(r)) for r in rows]
        for r in rows:
            x, y0 = point(r["shots"], band(r)[0])
            _, y1 = point(r["shots"], band(r)[1])
            draw.line([(x, y0), (x, y1)], fill=colour, width=1)
            draw.line([(x - 4, y0), (x + 4, y0)], fill=colour)
            draw.line([(x - 4, y1), (x + 4, y1)], fill=colour)
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=2)
        for x, y in pts:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)

    point = panel(60, 460, 30, 380, 0.0, 1.0)
    for i, v in enumerate(c for c in colours):
        rows = [r for r in summary["rows"] if r["variant"] == v]
        series(lambda k, y: (point(k, y)[0] + (i - 2.5) * 3, point(k, y)[1]), rows, lambda r: r["accuracy"],
               lambda r: r["ci"], colours[v])
        draw.text((470, 30 + 16 * i), v, fill=colours[v])
    if summary.get("oracle"):
        _, y = point(shots[0], summary["oracle"]["accuracy"])
        for x in range(60, 460, 10):
            draw.line([(x, y), (x + 5, y)], fill=(0, 0, 0))
        draw.text((470, 30 + 16 * 6), "oracle (ceiling)", fill=(0, 0, 0))
    draw.text((60, 8), "accuracy on the novel people's test files (95% bands)", fill=(0, 0, 0))
    draw.text((60, 400), "k: real shots per novel person", fill=(0, 0, 0))
    # right panel: differences against the best non-generative variant at each k
    diffs = []
    by_k = {k: {r["variant"]: r for r in summary["rows"] if r["shots"] == k} for k in shots}
    point = panel(640, 980, 30, 380, -0.5, 0.5)
    _, zero = point(shots[0], 0.0)
    draw.line([(640, zero), (980, zero)], fill=(160, 160, 160))
    contrasts = {(c["shots"], c["variant"], c["against"]): c
                 for c in ([summary["primary"]] if summary.get("primary") else []) + summary["secondary"]}
    for v in fs.GENERATIVE:
        rows = []
        for k in shots:
            best = max(fs.NON_GENERATIVE, key=lambda b: by_k[k][b]["accuracy"] if b in by_k[k] else -1)
            c = contrasts.get((k, v, best))
            if c is not None:
                rows.append({"shots": k, "d": c["difference"], "ci": c["ci"]})
        diffs.append(rows)
        series(point, rows, lambda r: r["d"], lambda r: r["ci"], colours[v])
    draw.text((640, 8), "generative minus best non-generative (paired bands)", fill=(0, 0, 0))
    draw.text((640, 400), "k", fill=(0, 0, 0))
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def main(argv: list[str] | None = None) -> int:
    cfg = cli.parse_config(FewShotConfig, argv, __doc__.split("\n\n")[0], prog="fewshot.py")
    return cli.run_main(run, cfg, prog="fewshot.py")


if __name__ == "__main__":
    sys.exit(main())
