#!/usr/bin/env bash
# The full test suite:
#   1. the core suite with no features (no set-up needed);
#   2. feature `cuda`: NVRTC compile checks and ptxas / nvdisasm checks of the
#      assembled kernels (registers, local memory, 16-byte loads) everywhere,
#      differential tests on the host execution of the kernels everywhere and
#      on the GPU where a CUDA device is present (reported as skipped
#      elsewhere), and the kernels under ThreadSanitizer
#      (scripts/kernel-race-check.sh); the fuzz targets type-check;
#   3. feature `torch`: the LM stack against HF fixtures (libtorch installed
#      by scripts/setup-torch.sh into ~/.cache/p3o);
#   4. features `cuda` and `torch`: the kernels on libtorch tensors;
#   5. a build of the product with features `cuda,torch` links no test-only
#      crate (`arbitrary`, which feature `testing` brings).
# Ends with one line adding up every test binary's results, a test that
# checked nothing on this machine (no GPU) counted as skipped, not passed.
# P3O_REQUIRE_GPU=1 makes such a test fail instead.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
skips=$(mktemp)
trap 'rm -f "$log" "$skips"' EXIT
export P3O_SKIP_LOG=$skips
cargo test --locked 2>&1 | tee -a "$log"
scripts/setup-cuda.sh
cargo test --locked --features cuda --test cuda_kernels -- --nocapture 2>&1 | tee -a "$log"
scripts/kernel-race-check.sh
# The fuzz targets (their own workspace, run by `cargo fuzz`) still build.
cargo check --locked --manifest-path fuzz/Cargo.toml --bins
scripts/setup-torch.sh
# shellcheck source=scripts/torch-env.sh
source scripts/torch-env.sh
cargo test --locked --features torch --tests 2>&1 | tee -a "$log"
# The fuzz targets of the training inputs, behind the fuzz crate's `torch`
# feature, build too.
cargo check --locked --manifest-path fuzz/Cargo.toml --features torch --bins
# Both: the kernels on libtorch tensors and chained into autograd.
cargo test --locked --features cuda,torch --test cuda_torch -- --nocapture 2>&1 | tee -a "$log"
# Test-only code stays out of the product: `cargo tree` of a normal build
# with every feature finds no `arbitrary`.
if cargo tree --locked --features cuda,torch -e normal,build -i arbitrary 2>/dev/null | grep -q arbitrary; then
    echo "a build with features cuda,torch depends on arbitrary:" >&2
    cargo tree --locked --features cuda,torch -e normal,build -i arbitrary >&2
    exit 1
fi
awk -v skipped="$(sed 's/: .*//' "$skips" | sort -u | wc -l)" '
    /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
    END { printf "%d passed, %d failed, %d skipped\n", p - skipped, f, skipped }' "$log"
