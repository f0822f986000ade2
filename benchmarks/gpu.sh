#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (cupy, numba-cuda and torch installed; DALI/cuDF/kvikio optional):
# the real-GPU tests (also under compute-sanitizer memcheck, racecheck and synccheck, when it is installed) and the GPU
# benchmark, printing tables for benchmarks/RESULTS.md.
#   bash benchmarks/gpu.sh [CELLS]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CELLS=${1:-20000}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import cupy, numba.cuda as c, torch; print('cupy', cupy.__version__, '| numba-cuda GPU', c.is_available(), '| torch', torch.__version__, torch.cuda.is_available())"
echo "== pytest -m gpu"
$PY -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
if command -v compute-sanitizer >/dev/null 2>&1; then
  # memcheck: out-of-bounds and misaligned accesses; racecheck: shared-memory races inside a
  # kernel; synccheck: barriers in divergent code. The whole GPU suite, streams included.
  for tool in memcheck racecheck synccheck; do
    echo "== the GPU tests under compute-sanitizer --tool $tool"
    compute-sanitizer --tool "$tool" --error-exitcode 1 --target-processes all \
      $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py -k "not two_ranks"
  done
fi
DATA=${DATA:-/tmp/gpuload_bench_${CELLS}.h5ad}
[ -f "$DATA" ] || $PY -m gpuload synth --out "$DATA" --cells "$CELLS" --quiet
echo "== GPU benchmark on $DATA"
$PY benchmarks/gpu_bench.py "$DATA" --batch-sizes 32 256 1024 --cells "$CELLS"
