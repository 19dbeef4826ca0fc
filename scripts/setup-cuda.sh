#!/usr/bin/env bash
# Installs what feature `cuda` needs at run time, idempotently, outside the
# checkout: the CUDA 13.0 NVRTC from its pip package, into
# ${P3O_CACHE:-~/.cache/p3o}/nvrtc-13.0.88 (where src/cuda/nvrtc.rs looks).
# No GPU and no CUDA toolkit are needed; the CUDA driver comes with a GPU.
set -euo pipefail
cache=${P3O_CACHE:-$HOME/.cache/p3o}
dest=$cache/nvrtc-13.0.88
if [ -f "$dest/nvidia/cu13/lib/libnvrtc.so.13" ]; then
    exit 0
fi
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/nvrtc.XXXXXX")
PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$tmp" nvidia-cuda-nvrtc==13.0.88
rm -rf "$dest"
mv "$tmp" "$dest"
echo "installed NVRTC 13.0.88 in $dest"
