#!/usr/bin/env bash
# Side by side with the peers (README "Side by side with the peers").
#
#   benches/peers/run.sh [all|mediator|relay|wireguard] [--quick]
#
# Builds the release binaries of this separate workspace (not part of the main CI) and runs
# the comparison; the markdown tables go to stdout, progress to stderr. Needs root (network
# namespaces), wireguard-go and wg (Debian packages wireguard-go and wireguard-tools),
# /dev/net/tun, libdbus-1-dev + pkg-config to build Affinidi's SDK, and for the mediator
# comparison a Redis-compatible server Affinidi's mediator 0.49.0 accepts (Redis >= 7.1,
# < 9.0): Debian 12's redis-server is 7.0.15, so valkey-server from bookworm-backports
# (redis_version 7.2.4), or a redis-server 7.1-8.x first on PATH, or PEERS_REDIS_SERVER=PATH.
# Our own mediator keeps its sled store. PEERS_REPS sets the number of alternating
# repetitions (default 5). Child processes and namespaces are removed on exit.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

missing=()
# A redis-server 7.1-8.x, else valkey-server (the program picks the same way).
redis_usable() {
    [ -n "${PEERS_REDIS_SERVER:-}" ] && return 0
    local v maj min
    v="$(redis-server --version 2>/dev/null | sed -n 's/.* v=\([0-9]*\)\.\([0-9]*\)\..*/\1 \2/p')"
    if [ -n "$v" ]; then
        read -r maj min <<<"$v"
        if [ "$maj" -lt 9 ] && { [ "$maj" -gt 7 ] || { [ "$maj" = 7 ] && [ "$min" -ge 1 ]; }; }; then
            return 0
        fi
    fi
    command -v valkey-server >/dev/null
}
case "${1:-all}" in
all | mediator)
    redis_usable || missing+=("valkey-server from Debian's bookworm-backports (Affinidi's mediator needs Redis >= 7.1, < 9.0; Debian 12's redis-server is 7.0.15): add /etc/apt/sources.list.d/backports.sources, a copy of the bookworm entry with 'Suites: bookworm-backports', then: apt-get update && apt-get install -t bookworm-backports valkey-server")
    ;;
esac
command -v wireguard-go >/dev/null || missing+=("wireguard-go (apt-get install wireguard-go)")
command -v wg >/dev/null || missing+=("wg (apt-get install wireguard-tools)")
command -v ip >/dev/null || missing+=("ip (apt-get install iproute2)")
command -v iptables >/dev/null || missing+=("iptables (apt-get install iptables)")
# Affinidi's SDK (affinidi-tdk-common) links libdbus through its keyring dependency.
pkg-config --exists dbus-1 2>/dev/null || missing+=("libdbus-1-dev and pkg-config (apt-get install libdbus-1-dev pkg-config; needed to build Affinidi's SDK)")
[ -e /dev/net/tun ] || missing+=("/dev/net/tun (a TUN device for wireguard-go)")
[ "$(id -u)" = 0 ] || missing+=("root (network namespaces)")
if [ ${#missing[@]} -gt 0 ]; then
    printf 'missing: %s\n' "${missing[@]}" >&2
    exit 2
fi

cargo build --release --locked --bins

# The benchmark runs in its own process group; on exit (normal, error or Ctrl-C) the whole
# group (mediators, redis-server, wireguard-go) is stopped and its namespaces removed.
set -m
./target/release/mpc-did-peers "$@" &
pid=$!
cleanup() {
    kill -TERM -- "-$pid" 2>/dev/null || true
    sleep 1
    kill -KILL -- "-$pid" 2>/dev/null || true
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^e3-$pid-" || true); do
        ip netns del "$ns" 2>/dev/null || true
    done
}
trap cleanup EXIT INT TERM
set +e
wait "$pid"
rc=$?
exit "$rc"
