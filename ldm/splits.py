"""The one split of a data folder that every stage shares: split.json.

The first stage that touches a data folder decides the split (`make_split`: per user, by file or by
recording with `group_regex`, reproducible from `seed`) and writes it with `write_split`; every later stage
reads it back (`read_split`), checks it belongs to the folder (`check_split`: a hash of the sorted file list)
and loads only its part (`SpectrogramFolder(root, subset=split["train"])`). No generator ever sees "test".
`make_split` first opens every file (check_file: headers, sizes, image checksums), so a corrupt file stops the
first stage even when the split would put it in "test". `read_split` checks the file's types and that its lists
still hash to its files_sha256 (an edited split is reported as such).

    make_split, write_split, read_split, check_split    decide, write, read back and check a split
    split_indices                                       the per-user draw behind make_split
    files_digest, recording_groups                      the folder's identity; each file's recording
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from ldm.data import SUPPORTED_SUFFIXES, check_file, relative_names, scan_folder
from ldm.io import atomic_write


# ----------------------------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------------------------
def split_indices(files: list[Path], labels: list[int], val_fraction: float, test_fraction: float, seed: int,
                  group_regex: str | None = None, group_of: list[str] | None = None) -> dict[str, list[int]]:
    """Per-user split of file indices into {"train", "val", "test"}.

    Within each user the files (or recording groups) are shuffled by numpy.random.default_rng([seed, label]);
    the first round(test_fraction * n) files go to test, the next round(val_fraction * n) to val, the rest to
    train, so the split depends only on the file names, the fractions and the seed. With group_regex, all
    files whose stems share the regex's first group (or whole match) stay in one split: windows cut from one
    recording then never straddle train and test (a recording-disjoint split: windows of one walk are nearly
    copies of each other, so a file-level split would test on near-duplicates of training files). `group_of` (one
    key per file, e.g. its recording from metadata.json: make_split) does the same without a regex and wins over it.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"need 0 <= val_fraction, test_fraction and their sum < 1, "
                         f"got {val_fraction}, {test_fraction}")
    pattern = re.compile(group_regex) if group_regex else None
    out = {"train": [], "val": [], "test": []}
    for label in sorted(set(labels)):
        idx = sorted((i for i, lab in enumerate(labels) if lab == label), key=lambda i: files[i].name)
        groups: dict[str, list[int]] = {}
        for i in idx:
            match = pattern.search(files[i].stem) if pattern else None
            key = (match.group(1) if match.groups() else match.group(0)) if match else files[i].name
            key = group_of[i] if group_of is not None else key
            groups.setdefault(key, []).append(i)
        keys = sorted(groups)
        order = np.random.default_rng([seed, label]).permutation(len(keys))
        n_test, n_val = round(test_fraction * len(idx)), round(val_fraction * len(idx))
        for j in order:
            members = groups[keys[j]]
            if n_test > 0:
                out["test"] += members
                n_test -= len(members)
            elif n_val > 0:
                out["val"] += members
                n_val -= len(members)
            else:
                out["train"] += members
        if not any(labels[i] == label for i in out["train"]):
            raise ValueError(f"user {label} has {len(idx)} file(s) ({len(keys)} group(s)): none left for training "
                             f"after val_fraction={val_fraction}, test_fraction={test_fraction}")
    return {k: sorted(v) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------------------------
# split.json: the one split every stage shares
# ----------------------------------------------------------------------------------------------------------------
SPLIT_FORMAT = "ldm-split-1"
SPLIT_PARTS = ("train", "val", "test")


def files_digest(names: list[str]) -> str:
    """sha256 of the sorted relative file names, one per line: identifies the folder a split was made for."""
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()


def recording_groups(root: str | Path, names: list[str]) -> list[str] | None:
    """Each file's recording, from ROOT/metadata.json's "recording_of" ({"<user>/<stem>": recording}, written by
    python -m ldm.radar and by the simulator's sessions); a file it does not list is its own recording. None when
    the folder has no such metadata."""
    try:
        recording_of = json.loads((Path(root) / "metadata.json").read_text(encoding="utf-8"))["recording_of"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(recording_of, dict) or not recording_of:
        return None
    stems = [name.rsplit(".", 1)[0] for name in names]
    return [str(recording_of.get(stem, stem)) for stem in stems]


def make_split(root: str | Path, test_fraction: float = 0.25, val_fraction: float = 0.1, seed: int = 0,
               group_regex: str | None = None, suffixes: tuple[str, ...] = SUPPORTED_SUFFIXES) -> dict:
    """Decide the split of a data folder once: {"train", "val", "test"} lists of relative file names, per user
    (split_indices), plus what it was made from (fractions, seed, regex, class map, hash of the file list).
    Without group_regex, the windows of one recording (or the walks of one simulated session) stay on one side when
    ROOT/metadata.json says which recording each file belongs to (recording_groups).

    "test" is the held-out real data every identity figure is measured on: no stage may train on it. "val" is
    for decisions made during training (evaluations, thresholds). Write it with write_split.
    """
    files, labels, class_to_idx = scan_folder(root, suffixes=suffixes)
    for path in files:                                                  # a corrupt file stops the first stage,
        check_file(path)                                                # wherever the split would put it
    names = relative_names(root, files)
    groups = None if group_regex else recording_groups(root, names)
    parts = split_indices(files, labels, val_fraction, test_fraction, seed, group_regex, groups)
    return {"format": SPLIT_FORMAT, "seed": seed, "group_regex": group_regex,
            "grouped_by": "group_regex" if group_regex else "metadata.json recording_of" if groups else "file",
            "test_fraction": test_fraction,
            "val_fraction": val_fraction, "num_files": len(names), "files_sha256": files_digest(names),
            "class_to_idx": class_to_idx, **{part: [names[i] for i in parts[part]] for part in SPLIT_PARTS}}


def write_split(path: str | Path, split: dict) -> None:
    """Write split.json atomically (a temporary file renamed into place)."""
    text = json.dumps(split, indent=1)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_split(path: str | Path) -> dict:
    """Load a split.json written by write_split; a clear error if it is missing or not one."""
    path = Path(path)
    if path.is_dir():
        path = path / "split.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no split.json there (train_vae.py / train_ldm.py write one in their run "
                                "folder)")
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a JSON split file ({err})") from None
    if not isinstance(split, dict) or split.get("format") != SPLIT_FORMAT:
        raise ValueError(f"{path}: not an ldm split file (expected \"format\": \"{SPLIT_FORMAT}\")")
    missing = [k for k in (*SPLIT_PARTS, "files_sha256", "class_to_idx") if k not in split]
    if missing:
        raise ValueError(f"{path}: split file lacks {missing}")
    for part in SPLIT_PARTS:
        if not (isinstance(split[part], list) and all(isinstance(name, str) for name in split[part])):
            raise ValueError(f"{path}: \"{part}\" is {json.dumps(split[part])[:40]}; expected a list of file names "
                             "(\"user/file\")")
    users = split["class_to_idx"]
    if not (isinstance(users, dict) and all(isinstance(i, int) and not isinstance(i, bool) for i in users.values())
            and sorted(users.values()) == list(range(len(users)))):
        raise ValueError(f"{path}: \"class_to_idx\" is {json.dumps(users)[:40]}; expected a map of user names to IDs "
                         "0, 1, ...")
    if not isinstance(split["files_sha256"], str):
        raise ValueError(f"{path}: \"files_sha256\" is {json.dumps(split['files_sha256'])[:40]}; expected the hash "
                         "string make_split wrote")
    names = [name for part in SPLIT_PARTS for name in split[part]]
    twice = sorted({name for name in names if names.count(name) > 1}) if len(set(names)) < len(names) else []
    overlap = (set(split["train"]) | set(split["val"])) & set(split["test"])
    if overlap:
        raise ValueError(f"{path}: {len(overlap)} file(s) are both in test and in train/val, "
                         f"e.g. {sorted(overlap)[0]}")
    if twice:
        raise ValueError(f"{path}: {len(twice)} file(s) are listed twice, e.g. {twice[0]}")
    # make_split hashes the folder's file list, and its three lists hold every file once: they hash to the same.
    if files_digest(names) != split["files_sha256"]:
        raise ValueError(f"{path}: an edited split: its train/val/test lists ({len(names)} files) no longer hash to "
                         "its files_sha256 (a file dropped from or added to a list, or the hash edited); use the "
                         "split.json the first run wrote, or start from a new run (a new split)")
    return split


def check_split(split: dict, root: str | Path, what: str = "--data",
                suffixes: tuple[str, ...] = SUPPORTED_SUFFIXES) -> None:
    """Raise ValueError unless ``root`` holds exactly the files ``split`` was made for (same names, same users)."""
    files, _, class_to_idx = scan_folder(root, suffixes=suffixes)
    names = relative_names(root, files)
    if files_digest(names) != split["files_sha256"]:
        known = set(split["train"]) | set(split["val"]) | set(split["test"])
        new, gone = sorted(set(names) - known), sorted(known - set(names))
        detail = (f"{len(new)} file(s) not in the split (e.g. {new[0]})" if new else
                  f"{len(gone)} file(s) of the split missing (e.g. {gone[0]})" if gone else "a different file list")
        raise ValueError(f"{what} {root}: not the data folder the split was made for ({detail}); use the same "
                         "folder, or start from a new run (a new split) for new data")
    if class_to_idx != split["class_to_idx"]:
        raise ValueError(f"{what} {root}: its users {sorted(class_to_idx)} differ from the split's "
                         f"{sorted(split['class_to_idx'])}")
