#!/usr/bin/env bash
# Runs one fuzz target on its corpus (fuzz/corpus/TARGET, not committed) and
# its committed seeds (fuzz/seeds/TARGET):
#
#   scripts/fuzz.sh TARGET [SECONDS]      # default 300 s
#
# Installs cargo-fuzz 0.13.2 when it is missing. The kernels' targets
# (host_*) run with no sanitizer: the kernels' host execution is C++, built
# by the `cc` crate. When clang++ is on the machine (Debian: apt-get install
# clang-14), that C++ is built with clang's -fsanitize=fuzzer-no-link, so that
# libFuzzer steers by the kernels' branches as well as the Rust side's;
# without clang it sees only the Rust side, and this says so.
# A crash file lands in fuzz/artifacts/TARGET; see fuzz/regressions/README.md.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
target=${1:?usage: scripts/fuzz.sh TARGET [SECONDS]}
seconds=${2:-300}
if [ ! -f "fuzz_targets/$target.rs" ]; then
    echo "no fuzz target '$target'; there are: $(cd fuzz_targets && ls | sed 's/\.rs$//' | tr '\n' ' ')" >&2
    exit 2
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.2 --locked
# cargo-fuzz passes nightly-only sanitizer flags; this lets stable take them.
export RUSTC_BOOTSTRAP=1
build=()
case $target in
host_*)
    build=(-s none)
    clang=$(command -v clang++ || command -v clang++-14 || true)
    if [ -n "$clang" ]; then
        export CXX=$clang P3O_HOST_KERNEL_FLAGS=-fsanitize=fuzzer-no-link
        # Its own build folder, so that instrumented and plain builds do not
        # replace each other.
        build+=(--target-dir target/kernel-coverage)
    else
        echo "no clang++ here: the kernels' own branches are not instrumented" >&2
    fi
    ;;
train_config | data_readers | model_files)
    # The training inputs' readers and the model loader live behind feature
    # `torch`.
    # shellcheck source=scripts/torch-env.sh
    source ../scripts/torch-env.sh
    build=(--features torch)
    # The main crate's binaries carry an rpath to libtorch (build.rs); the
    # fuzz target, built by another crate, finds it through the loader path.
    torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
    export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    ;;
esac
mkdir -p "corpus/$target"
if [ "$target" = model_files ]; then
    # The model fixtures as inputs (src/train/input_cases.rs,
    # model_files_input): each file's text, then a line `--`, then
    # model.safetensors' bytes.
    for m in ../tests/fixtures/models/*/; do
        seed="corpus/$target/fixture-$(basename "$m")"
        [ -f "$seed" ] && continue
        for f in config.json tokenizer.json tokenizer_config.json generation_config.json; do
            [ -f "$m$f" ] && cat "$m$f"
            printf '\n--\n'
        done >"$seed"
        cat "$m"model.safetensors* >>"$seed" 2>/dev/null || true
    done
fi
cargo fuzz run "${build[@]}" "$target" "corpus/$target" "seeds/$target" -- -max_total_time="$seconds"
