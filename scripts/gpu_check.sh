#!/usr/bin/env bash
# One call on a CUDA machine (toolkit, CuPy, PyTorch, pybind11, scikit-build-core, pytest and
# compute-sanitizer; no network): build fastnn for the GPU that is there, run the gpu tests,
# run both GPU benchmarks, run compute-sanitizer's memcheck and racecheck over a subset of the
# tests, and print a short summary last.
#
#   bash scripts/gpu_check.sh [OUT_DIR]      (default: $OUT, else ./gpu-results)
#
# Every stage has a time cap, shortened when the shortest useful run of the stages after it
# would not fit, so the whole ends within GPU_CHECK_BUDGET seconds (default 540: a device
# call runs 600 s at most, and the lease's 15 minutes include the machine's start). Typical
# times on an H100 are planned as: build 1-2 min, gpu tests 2-2.5 min (8 workers), optimizer
# bench 1.5-2 min, MLP bench 1.5-2.5 min, memcheck 1 min, racecheck 45 s (the sanitizers run
# last and stop where their cap falls). A stage that runs out of time is reported as such and
# the next one starts.
#
# Writes seven files into OUT_DIR, no more (the device tool brings back eight): gpu_check.log
# (build tail, backend report, test, sanitizer and benchmark output, the summary) and
# {optim,mlp}_cuda.{json,md,png} from the benchmark suites.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out="${1:-${OUT:-gpu-results}}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
log="$out/gpu_check.log"
: >"$log"
export PYTHONUNBUFFERED=1
budget=${GPU_CHECK_BUDGET:-540}
summary=()

# Per-test timeout and parallel workers, where the plugins are installed.
pytest_opts=(-q -p no:cacheprovider -rfE)
python3 -c "import pytest_timeout" 2>/dev/null && pytest_opts+=(--timeout=120)
workers=()
python3 -c "import xdist" 2>/dev/null && workers=(-n 8)

# stage NAME CAP RESERVE COMMAND...: runs COMMAND for at most CAP seconds, fewer when the
# budget minus RESERVE (the time the later stages need) ends sooner; its output goes to the log
# and to $stage_out. Sets $stage_rc (124: cut short at its cap, 125: skipped for want of time).
stage_out=/tmp/fastnn_stage.out
stage() {
  local name=$1 cap=$2 reserve=$3
  shift 3
  local left=$((budget - SECONDS - reserve))
  ((left < cap)) && cap=$left
  if ((cap < 15)); then
    echo "== $name: skipped, no time left" | tee -a "$log"
    : >"$stage_out"
    stage_rc=125
    return
  fi
  echo "== $name (at most ${cap} s, at ${SECONDS} s)" | tee -a "$log"
  timeout --signal=INT --kill-after=15 "$cap" "$@" 2>&1 | tee "$stage_out" >>"$log"
  stage_rc=${PIPESTATUS[0]}
  echo "-- $name: exit $stage_rc after $SECONDS s" >>"$log"
}

# How the last stage ended, in words.
stage_status() {
  case $stage_rc in
    0) echo "ok" ;;
    124) echo "CUT SHORT at its time cap" ;;
    125) echo "skipped (no time left)" ;;
    *) echo "FAILED (exit $stage_rc; see gpu_check.log)" ;;
  esac
}

# A pytest stage's summary: its last "N passed/failed ..." line, and how it ended.
pytest_result() {
  local line
  line=$(grep -E "[0-9]+ (passed|failed|error|skipped)|no tests ran" "$stage_out" | grep -v "SUMMARY" | tail -n 1)
  echo "${line:-no pytest summary}; $(stage_status)"
}

# ---- build ------------------------------------------------------------------------------------
# For this GPU's architecture only, so that the build takes a minute or two, not five.
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d '. ')
stage build 240 290 python3 -m pip install --no-build-isolation --no-deps -v -e . \
  -Ccmake.define.FASTNN_CUDA=ON -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="${arch:-native}"
if ((stage_rc == 0)); then
  summary+=("build: ok ($(grep -o 'CUDA kernels ON.*' "$stage_out" | head -1))")
  grep -E "fastnn:|warning" "$stage_out" | head -n 40
else
  tail -n 60 "$stage_out"
  summary+=("build: $(stage_status)")
fi

echo "== info" | tee -a "$log"
python3 -m fastnn info 2>&1 | tee -a "$log"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1 | tee -a "$log"
summary+=("devices: $(python3 -c 'import fastnn; print(fastnn.backend_info()["cuda_device_names"])' 2>&1 | tail -n 1)")
summary+=("torch $(python3 -c 'import torch; print(torch.__version__)' 2>&1 | tail -n 1), cupy $(python3 -c 'import cupy; print(cupy.__version__)' 2>&1 | tail -n 1)")

# ---- the gpu tests ----------------------------------------------------------------------------
stage "gpu tests" 150 230 python3 -m pytest -m gpu "${pytest_opts[@]}" "${workers[@]}"
summary+=("gpu tests: $(pytest_result)")

# ---- benchmarks (before the sanitizers: a benchmark cut short writes nothing) ------------------
stage "bench optim" 130 130 python3 bench/optim.py --device cuda --out "$out" --no-progress
summary+=("bench optim: $(stage_status)")
stage "bench mlp" 160 40 python3 bench/mlp.py --device cuda --out "$out" --no-progress --min-time 0.5
summary+=("bench mlp: $(stage_status)")

# ---- compute-sanitizer --------------------------------------------------------------------------
# Without CuPy's and torch's memory pools, so that every array is its own allocation and memcheck
# sees an access past its end. In the order they run, until the cap: memcheck, a whole captured
# training step, the stream and runtime tests, the multi-tensor launcher, then dense layers;
# racecheck (shared-memory hazards), the kernels with block reductions (batch norm, losses,
# the dense bias gradient).
sanitizer=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --print-limit 20 --error-exitcode 3)
sanitized_pytest=(python3 -c 'import sys, cupy, pytest; cupy.cuda.set_allocator(None); sys.exit(pytest.main(sys.argv[1:]))'
  -m gpu -q -p no:cacheprovider -rfE)
sanitizer_result() {
  local errors
  errors=$(grep -E "(ERROR|RACECHECK) SUMMARY" "$stage_out" | tail -n 1 | sed 's/^=* *//')
  echo "${errors:-no sanitizer summary} | tests: $(pytest_result)"
}
if command -v compute-sanitizer >/dev/null; then
  stage "memcheck" 60 15 "${sanitizer[@]}" --tool memcheck "${sanitized_pytest[@]}" tests/test_capture.py \
    tests/test_cuda_streams.py tests/test_cuda_runtime.py tests/test_cuda_multi_tensor.py \
    tests/test_dense.py -k "not 700 and not 1600 and (capture or cuda_ or (native and float32))"
  summary+=("memcheck: $(sanitizer_result)")
  stage "racecheck" 45 0 "${sanitizer[@]}" --tool racecheck "${sanitized_pytest[@]}" tests/test_batchnorm.py \
    tests/test_losses.py tests/test_dense.py -k "native and float32 and (batchnorm or loss or backward)"
  summary+=("racecheck: $(sanitizer_result)")
else
  summary+=("compute-sanitizer: not found on PATH")
fi

{
  echo
  echo "================ summary (${SECONDS} s) ================"
  printf '%s\n' "${summary[@]}"
  for md in "$out"/*_cuda.md; do
    [ -f "$md" ] && { echo; cat "$md"; }
  done
} | tee -a "$log"
