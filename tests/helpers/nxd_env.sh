#!/usr/bin/env bash
# Creates the Python environment in which neuronx-distributed's (NxD's) real code runs on a CPU machine, in NxD's
# own CPU mode (NXD_CPU_MODE=1: eager CPU tensors, torch.distributed over gloo, torchrun).
#
#   bash tests/helpers/nxd_env.sh VENV NXD_SRC
#
#   VENV     folder of the virtual environment to create (e.g. /work/nxd-venv); it must not be inside the checkout
#   NXD_SRC  the src/ folder of an NxD source checkout (github aws-neuron/neuronx-distributed, checked against
#            "Release 2.29", commit fbac349, version 0.18.0): the folder that holds neuronx_distributed/
#
# This script does not fetch NxD: get its source yourself and keep it outside this repository (nothing of it is
# committed here). NxD is not installed into the venv either: the tests find it through the NXD_SRC environment
# variable (tests/helpers/nxd_available.py puts it on sys.path, and on PYTHONPATH for the torchrun workers).
#
# Why a separate venv: NxD (and torch-neuronx on trn1) pins torch 2.9; torch-xla 2.9.0 does not import beside the
# torch 2.13 of the main environment (ABI error). The package index's torch 2.9.0 for x86_64 is the CUDA build
# (900 MB wheel, ~4.3 GB of nvidia-* packages, ~7 GB venv); there is no CPU-only torch 2.9.0 wheel for x86_64 on the
# default index, and `--no-deps` does not help (`import torch` then fails looking for libcublas). So the CUDA build
# is installed as it is; nothing of CUDA is used at run time. The Neuron-only packages NxD imports (torch_neuronx,
# neuronxcc, libneuronxla, nki, nkilib) are NOT installed: the index's packages of those names are placeholders that
# raise. tests/helpers/nxd_stubs.py provides import stubs for them instead.
#
# Then run the NxD tests with:
#   NXD_SRC=<src folder> VENV/bin/python -m pytest -m nxd tests/test_nxd_cpu_smoke.py
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 VENV NXD_SRC   (NXD_SRC = the src/ folder of an NxD source checkout)" >&2
    exit 2
fi
VENV=$1
NXD_SRC=$(cd "$2" && pwd)
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PYTHON=${PYTHON:-python3.11}

if [ ! -f "$NXD_SRC/neuronx_distributed/__init__.py" ]; then
    echo "error: $NXD_SRC/neuronx_distributed/__init__.py not found: NXD_SRC must name the src/ folder of an NxD checkout" >&2
    exit 2
fi
case "$(cd "$(dirname "$VENV")" && pwd)/$(basename "$VENV")/" in
    "$REPO"/*) echo "error: put the venv outside the checkout ($REPO)" >&2; exit 2 ;;
esac

"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)
"${PIP[@]}" --upgrade pip

# 1. torch + torch-xla, same release. torch-xla is imported by NxD even in CPU mode (xm, xla_env_vars, ...).
"${PIP[@]}" "torch==2.9.0" "torch-xla==2.9.0"

# 2. What NxD needs at import (beyond torch), transformers 4.51 for NxD's pipeline tracing (it subclasses HF
#    classes whose layout changed later), pytest for the tests.
"${PIP[@]}" safetensors tenacity "setuptools>=70.1" packaging boto3 "transformers==4.51.*" "pytest>=8"

# 3. This project, editable, without letting its dependency ranges move torch or transformers; then its
#    dependencies (ranges from pyproject.toml), with torch and transformers held where steps 1 and 2 put them, and
#    tokenizers / huggingface_hub held in transformers 4.51's ranges (unconstrained, pip takes the newest
#    huggingface_hub and tokenizers and breaks transformers 4.51).
"${PIP[@]}" --no-deps -e "$REPO"
cat >"$VENV/nxd-constraints.txt" <<'EOF'
torch==2.9.0
torch-xla==2.9.0
transformers==4.51.*
tokenizers>=0.21,<0.22
huggingface_hub>=0.30,<1.0
EOF
"${PIP[@]}" -c "$VENV/nxd-constraints.txt" \
    "hydra-core>=1.3.2,<1.4" "omegaconf>=2.3,<2.4" "submitit>=1.5" "rich>=13" "tqdm>=4.66" \
    "datasets>=3.0" "tokenizers>=0.20" "safetensors>=0.4" "huggingface_hub>=0.27" "tensorboard>=2.15" \
    "pyarrow>=15" "numpy>=1.26"

# 4. Check: NxD imports with the stubs, in CPU mode.
NXD_SRC="$NXD_SRC" NXD_CPU_MODE=1 "$VENV/bin/python" - <<EOF
import sys
sys.path.insert(0, "$REPO")
from tests.helpers.nxd_available import nxd_importable
ok, reason = nxd_importable()
print("nxd_importable:", ok, reason)
import torch, torch_xla, neuronx_distributed
from neuronx_distributed.modules.qkv_linear import GQAQKVColumnParallelLinear  # noqa: F401
print("torch", torch.__version__, "torch_xla", torch_xla.__version__, "neuronx_distributed", neuronx_distributed.__file__)
sys.exit(0 if ok else 1)
EOF
"$VENV/bin/python" -m pip freeze >"$VENV/nxd-freeze.txt"
echo "NxD CPU-mode venv ready: $VENV (frozen versions in $VENV/nxd-freeze.txt)"
