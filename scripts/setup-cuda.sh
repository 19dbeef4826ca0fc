#!/usr/bin/env bash
# Installs what feature `cuda` needs on a machine without a GPU, idempotently,
# outside the checkout, from pip packages (no CUDA toolkit, no GPU):
#   - the CUDA 13.0 NVRTC, into ${P3O_CACHE:-~/.cache/p3o}/nvrtc-13.0.88
#     (where src/cuda/nvrtc.rs looks): compiles the kernels to PTX;
#   - ptxas 13.0.88 and nvdisasm 13.2.51 (the oldest nvdisasm on PyPI), into
#     .../cuda-tools-13.0.88/bin: the kernels_assemble_* tests assemble that
#     PTX for sm_80 and sm_90 and read the registers, spills and loads.
# The CUDA driver comes with a GPU.
set -euo pipefail
cache=${P3O_CACHE:-$HOME/.cache/p3o}
mkdir -p "$cache"

# pip_into DEST PACKAGE...: installs the packages into DEST unless it exists.
pip_into() {
    local dest=$1
    shift
    local tmp
    tmp=$(mktemp -d "$cache/install.XXXXXX")
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$tmp" "$@"
    rm -rf "$dest"
    mv "$tmp" "$dest"
}

nvrtc=$cache/nvrtc-13.0.88
if [ ! -f "$nvrtc/nvidia/cu13/lib/libnvrtc.so.13" ]; then
    pip_into "$nvrtc" nvidia-cuda-nvrtc==13.0.88
    echo "installed NVRTC 13.0.88 in $nvrtc"
fi

tools=$cache/cuda-tools-13.0.88
if [ ! -x "$tools/bin/ptxas" ] || [ ! -x "$tools/bin/nvdisasm" ]; then
    pip_into "$tools.pkg" nvidia-cuda-nvcc==13.0.88 nvidia-cuda-nvdisasm==13.2.51
    # Keep the two programs (about 43 MB) and drop the rest of the compiler.
    rm -rf "$tools" && mkdir -p "$tools/bin"
    mv "$tools.pkg/nvidia/cu13/bin/ptxas" "$tools.pkg/nvidia/cu13/bin/nvdisasm" "$tools/bin/"
    rm -rf "$tools.pkg"
    chmod +x "$tools/bin/ptxas" "$tools/bin/nvdisasm"
    echo "installed ptxas 13.0.88 and nvdisasm 13.2.51 in $tools/bin"
fi
