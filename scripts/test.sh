#!/usr/bin/env bash
# The full test suite: the core suite with no features (no set-up needed),
# then feature `cuda` (NVRTC compile checks everywhere; differential tests
# where a CUDA device is present, 'skipped: no CUDA device' elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked
scripts/setup-cuda.sh
cargo test --locked --features cuda --test cuda_kernels -- --nocapture
