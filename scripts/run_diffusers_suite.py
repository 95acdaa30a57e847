"""Run diffusers' own tests for the classes ldm.compat offers, once with diffusers and once with ldm's classes bound
to the names the tests import, and report how many of the tests that pass with diffusers also pass with ldm.

    python scripts/run_diffusers_suite.py /tmp/diffusers           # a diffusers checkout (its tests/ folder is read)
    python scripts/run_diffusers_suite.py /tmp/diffusers --only ldm

Nothing of diffusers' test suite is copied here: the tests are read from the checkout, and ldm's classes are bound by
setting ``diffusers.AutoencoderKL = ldm.compat.AutoencoderKL`` (and the seven other names) before pytest collects
them. The suite runs on the CPU without the Hugging Face Hub (HF_HUB_OFFLINE=1). Its test helpers need the packages
parameterized, accelerate, requests_mock and psutil (e.g. ``pip install --target /tmp/deps ...`` and
``PYTHONPATH=/tmp/deps``). Get a checkout with
``git clone https://github.com/huggingface/diffusers /tmp/diffusers`` (the counts in docs/compat.md name the commit).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

TEST_FILES = [
    "tests/schedulers/test_scheduler_ddpm.py",
    "tests/schedulers/test_scheduler_ddim.py",
    "tests/schedulers/test_scheduler_dpm_multi.py",
    "tests/schedulers/test_scheduler_euler.py",
    "tests/schedulers/test_scheduler_euler_ancestral.py",
    "tests/models/autoencoders/test_models_autoencoder_kl.py",
    "tests/models/autoencoders/test_models_vq.py",
    "tests/models/unets/test_models_unet_2d_condition.py",
]
BOUND_NAMES = ["AutoencoderKL", "VQModel", "UNet2DConditionModel", "DDPMScheduler", "DDIMScheduler",
               "DPMSolverMultistepScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"]
REPO = Path(__file__).resolve().parents[1]


def run_pytest(binding: str, checkout: Path, junit: Path) -> None:
    """(In a child process.) Bind the names, then run pytest on the test files of the checkout."""
    import pytest
    if binding == "ldm":
        sys.path.insert(0, str(REPO))
        import diffusers

        import ldm.compat
        for name in BOUND_NAMES:
            setattr(diffusers, name, getattr(ldm.compat, name))
    os.chdir(checkout)
    sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", f"--junitxml={junit}", "-o", "junit_family=xunit1",
                          *TEST_FILES]))


def outcomes(junit: Path) -> dict[str, str]:
    """test id -> passed / failed / skipped, from a junit XML file."""
    results = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        results[test_id] = ("failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds
                            else "passed")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="a diffusers repository checkout (its tests/ folder is used)")
    parser.add_argument("--only", choices=["diffusers", "ldm"], help="run one binding only")
    parser.add_argument("--_child", nargs=2, metavar=("BINDING", "JUNIT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    checkout = args.checkout.resolve()
    if args._child:
        run_pytest(args._child[0], checkout, Path(args._child[1]))
    if not (checkout / "tests" / "schedulers").is_dir():
        parser.error(f"{checkout}: not a diffusers checkout (no tests/schedulers)")

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for binding in [args.only] if args.only else ["diffusers", "ldm"]:
            junit = Path(tmp) / f"{binding}.xml"
            subprocess.run([sys.executable, __file__, str(checkout), "--_child", binding, str(junit)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            results[binding] = outcomes(junit)
            counts = Counter(results[binding].values())
            print(f"{binding:9s}: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    if len(results) == 2:
        reference = [t for t, outcome in results["diffusers"].items() if outcome == "passed"]
        kept = [t for t in reference if results["ldm"].get(t) == "passed"]
        print(f"of the {len(reference)} tests that pass with diffusers, {len(kept)} pass with ldm.compat")
        for test_id in sorted(set(reference) - set(kept)):
            print(f"  not with ldm ({results['ldm'].get(test_id, 'missing')}): {test_id}")


if __name__ == "__main__":
    main()
