#!/usr/bin/env bash
# The main job: `mpc-did demo` — an in-process mediator on loopback, three party wallets in a
# temporary directory, the lobby, the pairwise Noise sessions and a real MPyC computation
# through them, then the same program over plain MPyC TCP for comparison.
# Arguments are passed on: ./demo.sh --parties 4 --program innerproduct
set -euo pipefail
cd "$(dirname "$0")"
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
echo "building mpc-did (release; the first build takes several minutes)..." >&2
cargo build --release -q -p mpc-did -p mpc-did-mediator
exec "${CARGO_TARGET_DIR:-target}/release/mpc-did" demo "$@"
