#!/usr/bin/env bash
# The evidence suite on an NVIDIA GPU: every server on CUDA, Deft with CUDA stream
# priorities on and off (e2e/bench/same_stream_runtime.py), the primary mix on each system
# and again at tighter and looser SLOs (1.1 and 2 x solo p99) on deft and layer. About eight
# minutes; writes e2e/bench/results/gpu/ (bench.partial.json after each system).
#
#   bash e2e/bench/gpu.sh                  # builds two venvs (needs PyPI and the CUDA index)
#   QUICK=1 bash e2e/bench/gpu.sh          # three systems, short phases (a few minutes)
#   bash e2e/bench/gpu.sh --mixes all      # every mix, as make bench (longer)
#   bash e2e/bench/gpu.sh --device_bound   # the device-bound plan: a transformer encoder as
#                                          # the batch model, deft and layer at 1.5, 1.1 and
#                                          # 2 x solo p99 (results/gpu-device/, ~6 minutes)
#
# A host without network access whose python3 already has CUDA torch (a CUDA image): carry
# the wheels from `bash e2e/bench/offline_kit.sh` (run where PyPI is reachable) and run
#
#   OFFLINE_KIT=.gpu-kit bash e2e/bench/gpu.sh
#
# which installs them beside that python3's own packages and leaves the Triton peer out.
set -euo pipefail
cd "$(dirname "$0")/../.."
TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}"
VENV="${VENV:-.venv-gpu}"
PEER_VENV="${PEER_VENV:-.peer-venv-gpu}"

nvidia-smi -L || echo "gpu.sh: no nvidia-smi here; torch decides below"
if [ -n "${OFFLINE_KIT:-}" ]; then
  PYTHON="${PYTHON:-python3}"
  SITE="${SITE:-/tmp/deft-site}"
  # what the kit leaves out must be there already
  "$PYTHON" -c "import torch, numpy, pandas, PIL, matplotlib" ||
    { echo "gpu.sh: $PYTHON lacks a package the kit leaves out (above)"; exit 1; }
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$OFFLINE_KIT"/*.whl
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  PEER_PYTHON="${PEER_PYTHON:-/nonexistent/peer-python}"
else
  make venv VENV="$VENV" TORCH_INDEX="$TORCH_INDEX"
  make peer-venv PEER_VENV="$PEER_VENV" TORCH_INDEX="$TORCH_INDEX" ||
    echo "gpu.sh: the Triton peer venv could not be built; Triton rows will be skipped"
  PYTHON="$VENV/bin/python"
  PEER_PYTHON="$PEER_VENV/bin/python"
fi
# `--device cpu` tries the GPU plan on the CPU (no GPU needed)
case " $* " in
  *" --device cpu "*) ;;
  *) "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else
       'torch in $PYTHON does not see a GPU')" ;;
esac
exec "$PYTHON" -m e2e.bench --gpu ${QUICK:+--quick} --peer_python "$PEER_PYTHON" "$@"
