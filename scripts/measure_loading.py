"""Time and peak memory of loading an SD-1.5-size UNet folder: ldm.io.load_pretrained vs diffusers' from_pretrained.

    python scripts/measure_loading.py [--folder /tmp/sd15-unet] [--repeats 3]

The folder is created once with random weights (diffusers' save_pretrained, fp32 safetensors, 3.4 GB). Each load
runs in a fresh subprocess so peak RSS (ru_maxrss) belongs to that load alone; the figures printed are median
wall times (to a usable model, and after reading every weight once, since safetensors files are memory-mapped and
read lazily) and the peak RSS above the interpreter's baseline after imports.
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

LOADERS = {
    "ldm": "from ldm.io import load_pretrained as load",
    "diffusers": "from diffusers import UNet2DConditionModel\nload = UNet2DConditionModel.from_pretrained",
}

CHILD = """
import json, resource, time, torch
{import_line}
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
model = load({folder!r})
seconds = time.perf_counter() - start
with torch.no_grad():   # read every weight once: memory-mapped files are only read when touched
    total = sum(float(p.sum()) for p in model.parameters())
touched = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"seconds": seconds, "seconds_touched": touched, "peak_mb": (peak - base) / 1024,
                  "params": sum(p.numel() for p in model.parameters())}}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default="/tmp/sd15-unet", help="where the random SD-1.5 UNet folder lives")
    parser.add_argument("--repeats", type=int, default=3, help="loads per library (interleaved)")
    args = parser.parse_args()
    folder = Path(args.folder)
    if not (folder / "config.json").is_file():
        from diffusers import UNet2DConditionModel
        print(f"writing a random SD-1.5 UNet to {folder} ...", flush=True)
        UNet2DConditionModel().save_pretrained(folder)   # diffusers' defaults are the SD-1.5 UNet
    size_gb = sum(f.stat().st_size for f in folder.iterdir()) / 1e9
    results = {name: [] for name in LOADERS}
    for _ in range(args.repeats):
        for name, import_line in LOADERS.items():
            code = CHILD.format(import_line=import_line, folder=str(folder))
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"folder: {folder} ({size_gb:.2f} GB of weights)")
    print(f"{'library':10s} {'load s':>7s} {'load + read every weight s':>27s} {'peak RSS MB':>12s}  (medians)")
    for name, runs in results.items():
        print(f"{name:10s} {statistics.median(r['seconds'] for r in runs):7.2f} "
              f"{statistics.median(r['seconds_touched'] for r in runs):27.2f} "
              f"{statistics.median(r['peak_mb'] for r in runs):12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
