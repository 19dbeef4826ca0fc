#!/usr/bin/env bash
# Mutation testing of the float64 reference (src/reference/) against the
# plain test suite (no features, no libtorch): every test target that has
# tests without features, except module_graph and spec_coverage, which read
# the sources and run none of the reference. Installs cargo-mutants 27.1.0
# if it is missing. Results go to ${OUT:-mutants.out}/ (caught.txt,
# missed.txt, unviable.txt, timeout.txt); extra arguments go to
# cargo-mutants (e.g. --iterate, or -f src/reference/losses.rs).
# VERIFICATION.md records the last full run.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo mutants --version 2>/dev/null | grep -q '^cargo-mutants 27.1.0'; then
    cargo install --locked cargo-mutants --version 27.1.0
fi
args=(--cargo-test-arg=--lib --cargo-test-arg=--bins)
for f in tests/*.rs; do
    name=$(basename "$f" .rs)
    # Targets of features `cuda` or `torch` hold no test in a plain build.
    grep -q '^#!\[cfg(' "$f" && continue
    case $name in module_graph | spec_coverage) continue ;; esac
    args+=(--cargo-test-arg=--test "--cargo-test-arg=$name")
done
# No debug info: the builds of each mutant link faster.
export CARGO_PROFILE_DEV_DEBUG=0
cargo mutants -f 'src/reference/*.rs' -j 1 -o "${OUT:-.}" "${args[@]}" "$@"
