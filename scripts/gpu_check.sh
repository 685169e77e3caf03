#!/usr/bin/env bash
# One call on a CUDA machine (toolkit, CuPy, PyTorch, pybind11, scikit-build-core, pytest; no
# network): build fastnn, run the GPU tests, run the GPU benchmarks, print a short summary last.
#
#   bash scripts/gpu_check.sh [OUT_DIR]      (default: $OUT, else ./gpu-results)
#
# Writes seven files into OUT_DIR: gpu_check.log (build tail, backend report, test and
# benchmark output), and {optim,mlp}_cuda.{json,md,png} from the benchmark suites.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-results}}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
log="$out/gpu_check.log"
export PYTHONUNBUFFERED=1
summary=()

echo "== build" | tee "$log"
if python3 -m pip install --no-build-isolation --no-deps -v -e . >/tmp/fastnn_build.log 2>&1; then
  summary+=("build: ok ($(grep -o 'CUDA kernels ON.*' /tmp/fastnn_build.log | head -1))")
  grep -E "fastnn:|warning" /tmp/fastnn_build.log | tee -a "$log"
else
  tail -n 60 /tmp/fastnn_build.log | tee -a "$log"
  summary+=("build: FAILED (tail in gpu_check.log)")
fi

echo "== info" | tee -a "$log"
python3 -m fastnn info 2>&1 | tee -a "$log"
summary+=("devices: $(python3 -c 'import fastnn; print(fastnn.backend_info()["cuda_device_names"])' 2>&1)")

echo "== GPU tests" | tee -a "$log"
python3 -m pytest -m gpu -q -rs -p no:cacheprovider 2>&1 | tee /tmp/fastnn_tests.log | tee -a "$log"
summary+=("gpu tests: $(tail -n 1 /tmp/fastnn_tests.log)")

echo "== GPU benchmarks" | tee -a "$log"
for suite in optim mlp; do
  if python3 "bench/$suite.py" --device cuda --out "$out" --no-progress 2>&1 | tee -a "$log"; then
    summary+=("bench $suite: ok")
  else
    summary+=("bench $suite: FAILED (see gpu_check.log)")
  fi
done

{
  echo
  echo "================ summary ================"
  printf '%s\n' "${summary[@]}"
  for md in "$out"/*_cuda.md; do
    [ -f "$md" ] && { echo; cat "$md"; }
  done
} | tee -a "$log"
