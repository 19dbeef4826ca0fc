#!/usr/bin/env bash
# Installs libtorch for feature `torch`, idempotently, outside the checkout:
# the pip package torch==2.11.0 (the version tch 0.24 expects; it runs on CPU
# and carries the CUDA 13 libraries) into a virtual environment at
# ${P3O_CACHE:-~/.cache/p3o}/torch-2.11.0. Prints nothing on a second run.
set -euo pipefail
cache=${P3O_CACHE:-$HOME/.cache/p3o}
venv=$cache/torch-2.11.0
if [ -x "$venv/bin/python3" ] && "$venv/bin/python3" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.11.0")' 2>/dev/null; then
    exit 0
fi
mkdir -p "$cache"
rm -rf "$venv"
python3 -m venv "$venv"
PIP_ROOT_USER_ACTION=ignore "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check torch==2.11.0
echo "installed torch 2.11.0 in $venv"
