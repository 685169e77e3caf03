#!/usr/bin/env bash
# One call on a CUDA machine (toolkit, CuPy, PyTorch, pybind11, scikit-build-core, pytest; no
# network): build fastnn, run the GPU tests, run the GPU benchmarks, print a short summary last.
#
#   bash scripts/gpu_check.sh [OUT_DIR]      (default: $OUT, else ./gpu-results)
#
# Writes build.log, info.txt, tests.log and the benchmark tables/JSON into OUT_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-results}}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
export PYTHONUNBUFFERED=1
summary=()

echo "== build"
if python3 -m pip install --no-build-isolation --no-deps -v . >"$out/build.log" 2>&1; then
  summary+=("build: ok ($(grep -o 'CUDA kernels ON.*' "$out/build.log" | head -1))")
else
  tail -n 40 "$out/build.log"
  summary+=("build: FAILED (see build.log)")
fi

echo "== info"
(cd /tmp && python3 -m fastnn info) | tee "$out/info.txt"
summary+=("devices: $(grep -E '^cuda_device_names' "$out/info.txt" | sed 's/^cuda_device_names *//')")

echo "== GPU tests"
# From tests/, so that the installed package (with its extension) is imported, not the source tree.
(cd tests && python3 -m pytest -m gpu -q -rs -p no:cacheprovider) 2>&1 | tee "$out/tests.log"
summary+=("gpu tests: $(tail -n 1 "$out/tests.log")")

echo "== GPU benchmarks"
for suite in optim mlp; do
  if [ -f "bench/$suite.py" ]; then
    if (cd /tmp && python3 "$OLDPWD/bench/$suite.py" --device cuda --out "$out") 2>&1 | tee "$out/bench_$suite.log"; then
      summary+=("bench $suite: ok")
    else
      summary+=("bench $suite: FAILED (see bench_$suite.log)")
    fi
  fi
done

echo
echo "================ summary ================"
printf '%s\n' "${summary[@]}"
for md in "$out"/*_cuda.md; do
  [ -f "$md" ] && { echo; cat "$md"; }
done
