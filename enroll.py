"""Enrol new people into a trained pipeline from k spectrograms each (ldm/enrollment.py, docs/enrollment.md).

    python enroll.py --pipeline runs/ldm/pipeline --data NEW --out runs/enrolled             # 4 files per person
    python enroll.py --pipeline runs/ldm/pipeline --data NEW --out runs/enrolled --shots 1   # one walk each
    python sample.py --model runs/enrolled/pipeline --user all                               # old and new people

NEW/<person>/<files> holds the new people (PNG/JPEG/.npy as train_ldm.py reads them; names the pipeline does not
know yet). --shots K files of each person are drawn with --seed (--split: from its train part only), read at the
pipeline's image size, and only the new people's ID tokens and class-embedding rows are learned with the VAE and the
UNet frozen (textual inversion; --lora-rank adds a small low-rank adapter, which changes the shared weights).

Writes OUT/pipeline (the old and the new people by name; every base weight bit-identical to --pipeline's without an
adapter; provenance.json records the base's training files and the K files of each new person, so evaluate.py can
refuse test files among them), OUT/config.json (every option as resolved) and OUT/enroll.json (each new person's
shots and the files left unused, which an evaluation may test on). OUT belongs to one run: an OUT that holds
anything is refused (--overwrite moves it aside to OUT.old-<time>). Every option and the data are checked before
the first step; errors are one line with exit status 2.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ldm import cli, files, lock, runs
from ldm.cli import option
from ldm.data import UNLABELLED, SpectrogramFolder, relative_names, scan_folder
from ldm.splits import check_split, read_split
from ldm.enrollment import EnrollConfig, enroll, image_size
from ldm.pipeline import Pipeline

DEFAULTS = EnrollConfig()


@dataclass
class EnrollScriptConfig:
    pipeline: str = option("runs/ldm/pipeline", "the trained pipeline folder (train_ldm.py's OUT/pipeline, or an "
                                                "earlier enroll.py's); it is only read")
    data: str | None = option(None, "the new people: NEW/<person>/<files> (required); person names must be new to "
                                    "the pipeline")
    out: str = option("runs/enrolled", "run folder: OUT/pipeline (old + new people), OUT/config.json, OUT/enroll.json")
    overwrite: bool = cli.overwrite_option()
    shots: int = option(4, "files per new person to enrol from (k); a person with fewer files is an error",
                        at_least=1, at_most=10_000)
    split: str | None = option(None, "a split.json made for --data: draw the shots from its train part only, so "
                                     "its test files stay unseen by the generator")
    steps: int = option(DEFAULTS.steps, "optimizer steps", at_least=1, at_most=1_000_000)
    lr: float = option(DEFAULTS.lr, "AdamW learning rate of the new rows (and the adapter)", above=0, at_most=10)
    batch_size: int = option(DEFAULTS.batch_size, "shots per step (all new people together)", at_least=1)
    lora_rank: int = option(DEFAULTS.lora_rank, "0: only the new people's rows train (base weights stay "
                                                "bit-identical); r > 0: also a rank-r adapter on the cross-attention "
                                                "key/value projections, merged into them (old people's samples change "
                                                "too)", at_least=0, at_most=1024)
    seed: int = option(DEFAULTS.seed, "seeds the draw of the shots and the enrolment's noise", at_least=0,
                       at_most=2**62)
    device: str = option("auto", "cpu, cuda, cuda:N, mps, or auto (cuda when available)")
    resize: str = option("resize", "how files of another size become the pipeline's image size: stretched, cropped, "
                                   "scaled to fit and padded with -1, or none (must match); see ldm/data.py",
                         choices=cli.RESIZE_POLICIES)
    colormap: str = cli.colormap_option()
    npy_scale: str = cli.npy_scale_option()
    dynamic_range: float = option(50.0, ".npy in dB: the dB range below the reference mapped to [-1, 1] (as the "
                                        "pipeline's training data)", above=0, at_most=400)
    db_reference: str = option("max", ".npy in dB: 0 dB is each image's maximum ('max') or this fixed dB value")
    progress: bool = option(True, "show a progress bar")


def draw_shots(cfg: EnrollScriptConfig, base: Pipeline) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """({person: the K drawn relative file names}, {person: the files left}) of --data, after every check that needs
    no image: new names, enough files, the split's folder."""
    files, labels, class_to_idx = scan_folder(cfg.data)
    names = relative_names(cfg.data, files)
    if list(class_to_idx) == [UNLABELLED]:
        raise ValueError(f"--data {cfg.data} is a flat folder; put each new person's files in NEW/<person>/")
    known = sorted(set(class_to_idx) & set(base.users))
    if known:
        raise ValueError(f"--data {cfg.data}: {known[0]!r} is already a person of --pipeline {cfg.pipeline}; enrol "
                         "new people under new names")
    allowed = None
    if cfg.split is not None:
        split = read_split(cfg.split)
        check_split(split, cfg.data, "--data")
        allowed = set(split["train"])
    generator = torch.Generator().manual_seed(cfg.seed)
    shots, rest = {}, {}
    for person, label in sorted(class_to_idx.items()):
        own = [n for n, lab in zip(names, labels) if lab == label and (allowed is None or n in allowed)]
        if len(own) < cfg.shots:
            where = " in the split's train part" if allowed is not None else ""
            raise ValueError(f"--data {cfg.data}: {person} has {len(own)} file(s){where}, fewer than --shots "
                             f"{cfg.shots}")
        order = torch.randperm(len(own), generator=generator).tolist()
        shots[person] = sorted(own[i] for i in order[:cfg.shots])
        rest[person] = sorted(own[i] for i in order[cfg.shots:])
    return shots, rest


def run(cfg: EnrollScriptConfig) -> int:
    # ---- every option and input checked before anything is written ---------------------------------------------------
    if cfg.data is None:
        raise ValueError("--data is required: the new people as NEW/<person>/<files>")
    cli.check_data_option(cfg.data)
    if cfg.data == "microdoppler":
        raise ValueError("--data microdoppler is train_ldm.py's simulated set; enroll.py needs a folder "
                         "NEW/<person>/<files> of new people (python -m ldm.radar.simulator writes one)")
    cli.db_reference(cfg.db_reference)
    out = Path(cfg.out)
    cli.check_writable(out)
    files.check_outputs_apart({"--out": out}, {"--pipeline": cfg.pipeline, "--data": cfg.data,
                                            **({"--split": cfg.split} if cfg.split else {})})
    runs.check_run_folder(out, None, cfg.overwrite)
    device = runs.resolve_device(cfg.device)
    base = Pipeline.from_pretrained(cfg.pipeline, device=device)
    shots_files, rest = draw_shots(cfg, base)
    height, width = image_size(base)
    data = SpectrogramFolder(cfg.data, size=(height, width), channels=base.vae.config.in_channels,
                             resize=cfg.resize, npy_scale=cfg.npy_scale, dynamic_range_db=cfg.dynamic_range,
                             db_reference=cli.db_reference(cfg.db_reference),
                             colormap=None if cfg.colormap == "none" else cfg.colormap,
                             subset=[n for files in shots_files.values() for n in files])
    x, _ = data.tensors()                                               # (N k, C, H, W) in [-1, 1]
    index = {name: i for i, name in enumerate(relative_names(data.root, data.files))}
    shots = {person: x[[index[n] for n in files]] for person, files in shots_files.items()}
    enroll_cfg = EnrollConfig(steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, lora_rank=cfg.lora_rank,
                              seed=cfg.seed)
    print(f"base     {cfg.pipeline}: {len(base.users)} people, {height}x{width} images"
          + ("" if base.provenance is not None else " (no provenance.json: its training files are unknown)"))
    print(f"new      {len(shots)} people of {cfg.data}, {cfg.shots} shot(s) each: {', '.join(shots)}")
    print(f"enrol    {cfg.steps} steps of batch {cfg.batch_size}, lr {cfg.lr}, "
          + (f"adapter rank {cfg.lora_rank}" if cfg.lora_rank else "rows only (base weights unchanged)")
          + f", on {device}", flush=True)

    # ---- enrol, then write the run folder --------------------------------------------------------------------------
    start = time.perf_counter()
    new = enroll(base, shots, shots_files, enroll_cfg, progress=cfg.progress)
    seconds = time.perf_counter() - start
    for done in runs.claim_run_folder(out, cfg.overwrite):
        print(f"enroll.py: {done}")
    with lock.hold_run_lock(out):
        runs.write_run_config(out, "enroll.py", {**dataclasses.asdict(cfg), "device": str(device)})
        files.replace_folder(out / "pipeline", new.save_pretrained)     # whole or not at all
        files.write_json({"format": "ldm-enroll-1", "base": str(cfg.pipeline), "data": str(cfg.data),
                       "shots": shots_files, "unused": rest, "seconds": seconds}, out / "enroll.json")
    print(f"enrolled {len(shots)} people in {seconds:.1f} s; wrote {out / 'pipeline'} ({len(new.users)} people) "
          f"and {out / 'enroll.json'} (each person's shots and unused files)")
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg = cli.parse_config(EnrollScriptConfig, argv, __doc__.split("\n\n")[0])
    return cli.run_main(run, cfg, prog="enroll.py")


if __name__ == "__main__":
    sys.exit(main())
