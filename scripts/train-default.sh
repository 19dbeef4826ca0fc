#!/usr/bin/env bash
# The main job on its built-in default: installs libtorch if needed (once),
# builds p3o with feature `torch`, and trains P3O-V2 on the built-in tiny task
# into ${1:-runs/default} (metrics.jsonl, checkpoints/, final/).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-torch.sh
# shellcheck source=scripts/torch-env.sh
source scripts/torch-env.sh
out=${1:-runs/default}
if [ -e "$out/metrics.jsonl" ]; then
    echo "$out already holds a run; give another directory as the first argument" >&2
    exit 2
fi
cargo run --release --locked --features torch -- train --out "$out" "${@:2}"
