#!/usr/bin/env bash
# GPU check (issue G): one script, under 8 minutes on one GPU. See benchmarks/gpu_check.py for what
# it measures; docs/performance.md for the numbers it gave.
#
#   bash benchmarks/gpu_check.sh           # a GPU node (results in $OUT or benchmarks/out/gpu_check.json)
#   bash benchmarks/gpu_check.sh --cpu     # the CPU fallback (CI): small networks and CTs, the same steps
#
# On a machine without network access, the Python packages travel as a bundle built beforehand with
# benchmarks/gpu_bundle.sh (see docs/gpu.md); benchmarks/gpu_install.sh unpacks it when present.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ -f .gpu/site.tar.xz ] && ! "$PYTHON" -c "import nnunetv2, prefect" 2>/dev/null; then
    source benchmarks/gpu_install.sh || exit 1
fi
export PYTHONUNBUFFERED=1
"$PYTHON" benchmarks/gpu_check.py "$@"
if [ "${1:-}" != "--cpu" ] && [ -z "${GPU_CHECK_NO_TESTS:-}" ] && "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    # the GPU-only tests, which skip on CPU machines (CI)
    timeout 150 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/segment/test_zoom.py tests/segment/test_segment_predict.py \
        tests/scale/test_scale_config.py
fi
