#!/usr/bin/env bash
# The main job: installs libtorch if needed (once), builds p3o with feature
# `torch`, and runs the whole toy pipeline (`p3o demo`: SFT, preferences,
# reward model, P3O-V1, P3O-V2, PPO and online DPO, report with plots) into
# ${1:-runs/demo}. Extra arguments go to `p3o demo` (e.g. --quick, --set seed=1).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-torch.sh
# shellcheck source=scripts/torch-env.sh
source scripts/torch-env.sh
out=${1:-runs/demo}
cargo run --release --locked --features torch -- demo --out "$out" "${@:2}"
