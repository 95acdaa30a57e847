#!/usr/bin/env bash
# GPU checks for ldm, prepared to run in one go on a CUDA machine. About 7 minutes on one H200 with the default steps.
#
#   1. installs the carried diffusers wheel if diffusers is missing (the device image has torch but no diffusers),
#   2. tests: the gpu-marked tests: full SD VAE, UNet and VQ in fp32 with TF32 off within 1e-4 of diffusers, the
#      SD 1.5 UNet in bf16 (bound in tests/test_gpu_speed.py), channels-last, no host sync, tiled 2048x2048 decode,
#      CUDA-graph sampling equal to eager sampling,
#   3. bf16, bf16_fast, compile, fp32: bench.py --device cuda --config sd in bf16 (with the CUDA-graph rows) on ldm's
#      plain path and on its ldm.fast path, bf16 + compile + channels-last (UNet forward batch 8 only, the row the
#      compile target is about) and fp32;
#      channels_last (only when named in STEPS): bf16 with channels-last on both sides, every row,
#   4. full (only when named in STEPS, alone: it needs a whole device call): make demo's GPU profile (128x128, the
#      microdoppler presets) end to end, report in $OUT/demo_cuda/report.md; never run yet, its length is unknown,
# and writes everything under $OUT (default ./gpu_out): gpu_tests.log, bench_*.json, bench_*.log, env.txt.
#
# With the device tool (see scripts/README.md), from the repository root, after fetching the wheels once here:
#   run(command="OUT=$OUT bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=600)
#   run(command="STEPS='tests bf16' OUT=$OUT bash scripts/gpu_check.sh", ...)    # a subset
# Each step has its own timeout, so one slow step cannot eat the others; bench.py rewrites its JSON after every row.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
status=0
# Steps to run: tests bf16 bf16_fast (the default), compile, fp32, channels_last, workload, workload_compile and full;
# a subset when time is short
STEPS="${STEPS:-tests bf16 bf16_fast}"
want() { [[ " $STEPS " == *" $1 "* ]]; }

# ---- 1. environment ------------------------------------------------------------------------------------------------
if ! "$PY" -c "import diffusers" 2>/dev/null; then
    ls .whl/diffusers-*.whl >/dev/null 2>&1 || { echo "diffusers is missing and no .whl/diffusers-*.whl was carried"; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 2
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # ldm from this checkout, not installed
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
    "$PY" -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'diffusers', diffusers.__version__, 'device', torch.cuda.get_device_name())"
} | tee "$OUT/env.txt"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 2

# ---- 2. gpu-marked tests -------------------------------------------------------------------------------------------
if want tests; then
    timeout 170 "$PY" -m pytest -q -m gpu -s -p no:cacheprovider \
        tests/test_vae.py tests/test_unet.py tests/test_vq.py tests/test_gpu_speed.py tests/test_sample.py 2>&1 \
        | tee "$OUT/gpu_tests.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

# ---- 3. benchmarks -------------------------------------------------------------------------------------------------
bench() {   # bench NAME SECONDS ARGS...
    local name=$1 seconds=$2
    shift 2
    timeout "$seconds" "$PY" scripts/bench.py --device cuda --config sd --repeats 5 --warmup 1 --out "$OUT/bench_$name.json" \
        --markdown "$@" 2>&1 | tee "$OUT/bench_$name.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "bench $name failed or timed out"; status=1; }
}
want bf16 && bench bf16 160 --dtype bf16
want bf16_fast && bench bf16_fast 160 --dtype bf16 --ldm-path fast
want compile && bench bf16_compile 240 --dtype bf16 --compile --channels-last --rows unet_forward_b8
want fp32 && bench fp32 200 --dtype fp32 --repeats 3   # fp32 is slow: 3 repeats keep the script under 8 minutes
want channels_last && bench bf16_channels_last 150 --dtype bf16 --channels-last   # not in the default STEPS
# the user's own workload (not in the default STEPS): train_vae's and train_ldm's steps at the microdoppler presets
# (256x256x1, batch 16) on ldm's fast path, and DPM-Solver++ 20 steps + CUDA graph; 'workload' runs them eager,
# 'workload_compile' compiled on both sides
for mode in eager compile; do
    step=workload; [ $mode = compile ] && step=workload_compile
    want $step || continue
    timeout 200 "$PY" scripts/bench.py --device cuda --config microdoppler --dtype bf16 --repeats 5 --warmup 1 \
        --ldm-path fast --rows vae_train_step,denoiser_train_step,dpm20_sampling_graph \
        $([ $mode = compile ] && echo --compile) --out "$OUT/bench_workload_$mode.json" --markdown 2>&1 \
        | tee "$OUT/bench_workload_$mode.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "bench $step failed or timed out"; status=1; }
done


# ---- 4. the full-size run ------------------------------------------------------------------------------------------
if want full; then
    timeout 560 "$PY" scripts/demo.py --device cuda --out "$OUT/demo_cuda" 2>&1 | tee "$OUT/demo_cuda.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "full: make demo's GPU profile failed or ran past 560 s"; status=1; }
fi

echo "gpu_check: $([ $status -eq 0 ] && echo PASSED || echo FAILED); results in $OUT"
exit $status
