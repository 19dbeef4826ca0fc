#!/usr/bin/env bash
# Installs libtorch for feature `torch`, idempotently, outside the checkout:
# the pip package torch==2.11.0 (the version tch 0.24 expects; it runs on CPU
# and carries the CUDA 13 libraries) into a virtual environment at
# ${P3O_CACHE:-~/.cache/p3o}/torch-2.11.0, with transformers==5.24.0 beside it
# (tests/hf_reopen.rs reopens p3o's checkpoints in it) and peft==0.21.2
# (tests/torch_peft.rs opens p3o's adapters with it). Prints nothing on a
# second run.
set -euo pipefail
cache=${P3O_CACHE:-$HOME/.cache/p3o}
venv=$cache/torch-2.11.0
py=$venv/bin/python3
pip() { PIP_ROOT_USER_ACTION=ignore "$py" -m pip install --quiet --disable-pip-version-check "$@"; }
has_torch() { [ -x "$py" ] && "$py" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.11.0")' 2>/dev/null; }
has_transformers() { "$py" -c 'import transformers, sys; sys.exit(transformers.__version__ != "5.24.0")' 2>/dev/null; }
has_peft() { "$py" -c 'import peft, sys; sys.exit(peft.__version__ != "0.21.2")' 2>/dev/null; }
if ! has_torch; then
    mkdir -p "$cache"
    rm -rf "$venv"
    python3 -m venv "$venv"
    pip torch==2.11.0
    echo "installed torch 2.11.0 in $venv"
fi
if ! has_transformers; then
    pip transformers==5.24.0
    echo "installed transformers 5.24.0 in $venv"
fi
if ! has_peft; then
    pip peft==0.21.2
    echo "installed peft 0.21.2 in $venv"
fi
