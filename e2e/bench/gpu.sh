#!/usr/bin/env bash
# The evidence suite on an NVIDIA GPU: the same mixes, systems and outputs as `make bench`,
# with every server on CUDA, plus Deft with CUDA stream priorities off
# (e2e/bench/same_stream_runtime.py). Writes e2e/bench/results/gpu/.
#
#   bash e2e/bench/gpu.sh            # full (about 15 minutes)
#   QUICK=1 bash e2e/bench/gpu.sh    # the first mix, three systems (a few minutes)
#
# Needs network access to PyPI and the PyTorch CUDA index the first time (two venvs).
set -euo pipefail
cd "$(dirname "$0")/../.."
TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}"
VENV="${VENV:-.venv-gpu}"
PEER_VENV="${PEER_VENV:-.peer-venv-gpu}"

nvidia-smi -L
make venv VENV="$VENV" TORCH_INDEX="$TORCH_INDEX"
make peer-venv PEER_VENV="$PEER_VENV" TORCH_INDEX="$TORCH_INDEX" ||
  echo "gpu.sh: the Triton peer venv could not be built; Triton rows will be skipped"
"$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else
  'torch in $VENV does not see a GPU')"
"$VENV/bin/python" -m e2e.bench --gpu ${QUICK:+--quick} \
  --peer_python "$PEER_VENV/bin/python" "$@"
