#!/usr/bin/env bash
# Everything that needs the GPU, in one device call of at most 10 minutes:
#   1. the CUDA tests:            PYTHONPATH=. python3 -m pytest -m cuda -q
#   2. benchmarks/gemm_cuda.py    GEMM 1024-8192 vs cuBLAS (fp32, tf32, fp16)
#   3. benchmarks/conv_cuda.py    ResNet-50 conv layers vs cuDNN (batch 32, fp32/TF32)
#   4. benchmarks/gpu_vs_cpu.py   models vs our CPU provider and PyTorch eager, BERT launches,
#                                 CUDA-graph replay overhead
# Each step has its own time limit and a failing step does not stop the next ones. Results go to
# benchmarks/results/ (JSON + markdown + PNG per benchmark). When $OUT is set (the device tool's
# return folder, which brings back at most 8 files) it receives: summary.md (every benchmark's
# markdown, the test summary), gpu_results.tar.gz (all result files and logs) and the logs.
#
#   bash benchmarks/run_gpu_all.sh            # QUICK=1 for a shorter run (fewer sizes/batches)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=.
RES=benchmarks/results
LOGS=$(mktemp -d)
mkdir -p "$RES"
touch "$LOGS/.start"
T0=$(date +%s)

step() {  # step <name> <seconds> <command...>
  local name=$1 limit=$2
  shift 2
  local t=$(date +%s)
  echo "=== $name (limit ${limit}s, at +$((t - T0))s)"
  timeout --signal=INT --kill-after=10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$LOGS/$name.log"
  echo "=== $name: exit $rc after $(( $(date +%s) - t ))s"
  echo "$name: exit $rc after $(( $(date +%s) - t ))s" >> "$LOGS/steps.txt"
}

# A GPU run without a usable GPU fails (exit 1 with the reason): it must never look green.
export EP_REQUIRE_GPU=1   # and the GPU tests fail instead of skipping
python3 - <<'EOF' || { echo "CUDA provider not available: nothing ran (exit 1)"; exit 1; }
import sys
from ep_cuda import CUDAExecutionProvider
ok, why = CUDAExecutionProvider.availability()
print("CUDA provider available:", ok, why)
sys.exit(0 if ok else 1)
EOF
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true

if [ "${QUICK:-0}" = "1" ]; then
  GEMM_ARGS="--sizes 1024 4096"; CONV_ARGS="--dtypes fp32 --no-nchw"
  MODEL_ARGS="--batches 1 32 --reps 10 --cpu-budget 5"
else
  GEMM_ARGS=""; CONV_ARGS="--dtypes fp32 --no-nchw"
  MODEL_ARGS="--batches 1 8 32 --reps 10 --cpu-budget 6"
fi

# pytest-xdist (in the GPU image) runs the tests in 4 processes sharing the GPU
XDIST=""; python3 -c "import xdist" 2>/dev/null && XDIST="-n 4"
step pytest_cuda 200 python3 -m pytest -m cuda -q -p no:cacheprovider $XDIST
step gemm_cuda 100 python3 benchmarks/gemm_cuda.py --out "$RES" $GEMM_ARGS
step conv_cuda 90 python3 benchmarks/conv_cuda.py --out "$RES" $CONV_ARGS
step gpu_vs_cpu 170 python3 benchmarks/gpu_vs_cpu.py --out "$RES" $MODEL_ARGS
echo "total $(( $(date +%s) - T0 ))s"

NEW=$(find "$RES" -type f -newer "$LOGS/.start" | sort)
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  {
    echo "# GPU run $(date -u +%Y-%m-%dT%H:%MZ)"
    echo; echo '```'; cat "$LOGS/steps.txt"; echo '```'
    echo; echo "## pytest -m cuda"; echo; echo '```'; tail -n 40 "$LOGS/pytest_cuda.log"; echo '```'
    for f in $NEW; do case "$f" in *.md) echo; cat "$f";; esac; done
  } > "$OUT/summary.md"
  tar czf "$OUT/gpu_results.tar.gz" $NEW -C "$LOGS" $(cd "$LOGS" && ls *.log steps.txt)
  cp "$LOGS/pytest_cuda.log" "$OUT/pytest_cuda.log"
  ls -l "$OUT"
fi
