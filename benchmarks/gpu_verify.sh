#!/usr/bin/env bash
# One-call GPU verification of the CUDA provider (issue 13): at most 8 minutes on one H100/H200,
# exit status 1 if anything fails, 0 only when every step passed.
#
#   bash benchmarks/gpu_verify.sh            # QUICK=1: node cases on the CI subset only
#
# Results: JSON + markdown (gpu_verify.json, gpu_verify.md) and each step's <step>.json / .log in
# $OUT when set (then the per-step files are packed into details.tar.gz, so at most 8 files come
# back), else in benchmarks/results/gpu_<date>/. Steps, each with a time limit, all inside one
# 470-second budget (a step cut short fails); a failing step does not stop the next ones, except
# the first: without a usable CUDA provider the run stops at once with the reason.
#   env            driver, CuPy, NVRTC, compute capability (fails if the provider is unavailable)
#   compile        every kernel file compiled once, in parallel (warms CuPy's kernel cache)
#   kernel_tests   pytest -m cuda on the kernel tests vs the CPU provider, CUDA_LAUNCH_BLOCKING=1
#   session_tests  pytest -m cuda on the session and fusion tests (CUDA-graph captures asserted)
#   node_cases     every onnx node case through sessions ['cuda','cpu'] == CPU-only pass list
#   gemm           our GEMM vs cupy.matmul: fp32/TF32/fp16, square, ragged, misaligned, 70 000-batch
#   int8           the integer GEMM (IMMA / dp4a) on BERT-base shapes: exact, and timed vs our FP32
#                  GEMM; DynamicQuantizeMatMul (quantize + int8 GEMM + epilogue) vs FP32 MatMul
#   big            tensors of more than 2**31 elements
#   models         ResNet-50, MobileNetV2, BERT-base, GPT-2 step vs the CPU provider
#   sanitizer      compute-sanitizer memcheck + racecheck on the tensor-core GEMM, NHWC fp16 conv,
#                  softmax and scatter kernels (only where compute-sanitizer is installed)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export EP_REQUIRE_GPU=1            # GPU tests fail instead of skipping without a usable GPU
PY=${PYTHON:-python3}
RES=${OUT:-benchmarks/results/gpu_$(date -u +%Y-%m-%d)}
mkdir -p "$RES"
: > "$RES/steps.tsv"
T0=$(date +%s)
BUDGET=${GPU_VERIFY_BUDGET:-470}
FAILED=0

step() {  # step <name> <limit seconds> <command...>: runs it, logs to <name>.log, records the exit
  local name=$1 limit=$2
  shift 2
  local left=$(( BUDGET - ($(date +%s) - T0) ))
  [ "$left" -lt "$limit" ] && limit=$left
  local t=$(date +%s) rc
  if [ "$limit" -le 5 ]; then
    echo "=== $name: no time left in the ${BUDGET}s budget" | tee "$RES/$name.log"
    rc=124
  else
    echo "=== $name (limit ${limit}s, at +$(( t - T0 ))s)"
    timeout --signal=INT --kill-after=10 "$limit" "$@" > "$RES/$name.log" 2>&1
    rc=$?
    tail -n 15 "$RES/$name.log"
  fi
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t ))" >> "$RES/steps.tsv"
  echo "=== $name: exit $rc after $(( $(date +%s) - t ))s"
  [ "$rc" -eq 0 ] || FAILED=1
  return "$rc"
}

finish() {
  "$PY" benchmarks/cuda_verify.py report --out "$RES" > /dev/null 2>&1 || true
  if [ -n "${OUT:-}" ]; then   # the device tool brings back at most 8 files
    (cd "$RES" && find . -maxdepth 1 -type f ! -name details.tar.gz ! -name 'gpu_verify.*' ! -name .details \
        -printf '%f\n' | sort > .details && tar czf details.tar.gz -T .details &&
     xargs rm -f < .details && rm -f .details)
  fi
  cat "$RES/gpu_verify.md" 2>/dev/null
  echo "gpu_verify: $([ "$FAILED" -eq 0 ] && echo PASS || echo FAIL) after $(( $(date +%s) - T0 ))s; results in $RES"
  exit "$FAILED"
}

if ! step env 60 "$PY" benchmarks/cuda_verify.py env --out "$RES"; then
  echo "gpu_verify: FAIL: $(grep -m1 'NOT available' "$RES/env.log" || tail -n 3 "$RES/env.log")"
  finish
fi
nvidia-smi > "$RES/nvidia-smi.txt" 2>&1 || true

XDIST=""
"$PY" -c "import xdist" 2>/dev/null && XDIST="-n 4"
NODE_ARGS=""
[ "${QUICK:-0}" = "1" ] && NODE_ARGS="--subset"

step compile 120 "$PY" benchmarks/cuda_verify.py compile --out "$RES" -j 16
step kernel_tests 110 env CUDA_LAUNCH_BLOCKING=1 "$PY" -m pytest -q -p no:cacheprovider -m cuda $XDIST \
  --junitxml="$RES/kernel_tests.xml" tests/test_cuda_elementwise.py tests/test_cuda_nn.py \
  tests/test_cuda_reduce_norm.py tests/test_cuda_tensor.py tests/test_cuda_gemm_tiles.py
step session_tests 60 "$PY" -m pytest -q -p no:cacheprovider -m cuda --junitxml="$RES/session_tests.xml" \
  tests/test_cuda_session.py tests/test_cuda_fusion.py
step node_cases 100 "$PY" -m ep_cuda.conformance --sessions --backend gpu --quiet $NODE_ARGS \
  --json "$RES/node_cases.json"
step gemm 40 "$PY" benchmarks/cuda_verify.py gemm --out "$RES"
step int8 40 "$PY" benchmarks/cuda_verify.py int8 --out "$RES"
step big 40 "$PY" benchmarks/cuda_verify.py big --out "$RES"
step models 90 "$PY" benchmarks/cuda_verify.py models --out "$RES"
if command -v compute-sanitizer > /dev/null 2>&1; then
  step sanitizer 60 bash -c "compute-sanitizer --tool memcheck --error-exitcode 1 $PY benchmarks/cuda_verify.py sanitize --out '$RES' &&
    compute-sanitizer --tool racecheck --racecheck-report hazard --error-exitcode 1 $PY benchmarks/cuda_verify.py sanitize --out '$RES'"
else
  echo "=== sanitizer: compute-sanitizer not installed, skipped (optional)"
fi
finish
