#!/usr/bin/env bash
# The full test suite:
#   1. the core suite with no features (no set-up needed);
#   2. feature `cuda`: NVRTC compile checks everywhere, differential tests where
#      a CUDA device is present ('skipped: no CUDA device' elsewhere);
#   3. feature `torch`: the LM stack against HF fixtures (libtorch installed
#      by scripts/setup-torch.sh into ~/.cache/p3o).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked
scripts/setup-cuda.sh
cargo test --locked --features cuda --test cuda_kernels -- --nocapture
scripts/setup-torch.sh
# shellcheck source=scripts/torch-env.sh
source scripts/torch-env.sh
cargo test --locked --features torch
