#!/usr/bin/env bash
# Runs many seeded schedules of the raft simulation (node/src/raft/sim.rs).
#   scripts/sim.sh [SEEDS] [FIRST_SEED]    (default: 20000 seeds from 1)
# A failing seed is printed with the command that replays it exactly:
#   SWARMLET_SIM_SEED=N cargo test --release -p swarmlet --lib raft::sim
set -euo pipefail
cd "$(dirname "$0")/.."
SWARMLET_SIM_SEEDS="${1:-20000}" SWARMLET_SIM_SEED_BASE="${2:-1}" \
  cargo test --release -p swarmlet --lib raft::sim::seeded -- --nocapture
