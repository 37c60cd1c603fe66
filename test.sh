#!/usr/bin/env bash
# The whole mpc-did test suite, on a fresh Debian/Ubuntu machine with Rust (rustup).
#
# Installs what the tests need and is missing (Debian packages: redis-server, iproute2,
# iptables, conntrack, python3, util-linux, openssl, caddy, nginx-light, nodejs + npm,
# wireguard-go, wireguard-tools; a Python venv with the interop peers of python-requirements.txt;
# the npm project of the Veramo interop peer; cargo-fuzz), then runs: rustfmt check, clippy
# (-D warnings), every test of the workspace
# (unit, property, interop, end-to-end with the real binaries on loopback), the docs build,
# and every cargo-fuzz target for a bounded time.
#
# Environment:
#   MPC_DID_VENV          Python venv to use/create            (default: ./.venv)
#   MPC_DID_FUZZ_SECONDS  seconds each fuzz target runs        (default: 30; 0 = build only)
#   CARGO_TARGET_DIR      as usual
# Exit status: 0 when everything passed, non-zero at the first failing step (named on stderr).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

START=$(date +%s)
step() { printf '\n== [%4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }
fail() { printf '\ntest.sh: FAILED: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else fail "need root to run: $*"; fi; }

step "system packages"
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v ip >/dev/null || missing+=(iproute2)
command -v iptables >/dev/null || missing+=(iptables)
command -v conntrack >/dev/null || missing+=(conntrack)
# The local-stranger test runs its attacker as uid 65534 with the system Python (a
# pyenv/venv interpreter under /root is not readable by that user) and util-linux setpriv.
[ -x /usr/bin/python3 ] || missing+=(python3)
command -v setpriv >/dev/null || missing+=(util-linux)
# The operator tests: a private CA, the shipped Caddyfile and nginx.conf (issue 18).
command -v openssl >/dev/null || missing+=(openssl)
command -v caddy >/dev/null || missing+=(caddy)
command -v nginx >/dev/null || missing+=(nginx-light)
# The e3 evaluation matrix's WireGuard mode (spec/e3.md §4; userspace, no kernel module).
command -v wireguard-go >/dev/null || missing+=(wireguard-go)
command -v wg >/dev/null || missing+=(wireguard-tools)
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
redis-server --version

step "python venv (interop peers: $(sed 's/#.*//' python-requirements.txt | xargs))"
VENV=${MPC_DID_VENV:-$ROOT/.venv}
stamp="$VENV/.requirements-$(sha256sum python-requirements.txt | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  python3 -m venv "$VENV" || fail "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r python-requirements.txt
  touch "$stamp"
fi
"$VENV/bin/python" -c 'import mpyc, didcomm, zxingcpp; print("mpyc", mpyc.__version__)'
export MPC_DID_PYTHON="$VENV/bin/python"

step "Veramo interop peer (npm ci in interop/veramo; versions pinned by its package-lock.json)"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
node --version
(cd interop/veramo && npm ci --no-audit --no-fund --loglevel=error) || fail "npm ci in interop/veramo"
# Interop and MPyC tests must fail, not skip, when their peer is missing.
export MPC_DID_REQUIRE_INTEROP=1
export MPC_DID_REQUIRE_QR_DECODE=1
# Network-namespace tests (NAT traversal, e3) need root; as root they must run, not skip.
# As root, the e3 matrix's --quick run (about 3 minutes) is part of the tests too.
if [ "$(id -u)" = 0 ]; then export MPC_DID_REQUIRE_NETNS=1 MPC_DID_E3_MATRIX=1; fi

step "cargo fmt --check"
cargo fmt --all --check || fail "formatting: run cargo fmt --all"

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings || fail "clippy"

step "cargo test"
cargo test --workspace --locked || fail "cargo test"

step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked -q || fail "cargo doc"

step "fuzz targets"
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^mpc-did-fuzz$' || true)
if [ -z "$targets" ]; then
  echo "no fuzz targets yet"
elif ! rustup toolchain list | grep -q '^nightly'; then
  fail "cargo fuzz needs a nightly toolchain (rustup toolchain install nightly)"
else
  command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked -q
  secs=${MPC_DID_FUZZ_SECONDS:-30}
  (cd fuzz && cargo +nightly fuzz build -O) || fail "cargo fuzz build"
  if [ "$secs" -gt 0 ]; then
    for t in $targets; do
      corpus=$(mktemp -d)
      [ -d "fuzz/seeds/$t" ] && cp -r "fuzz/seeds/$t/." "$corpus/"
      echo "fuzzing $t for ${secs}s"
      (cd fuzz && cargo +nightly fuzz run -O "$t" "$corpus" -- -max_total_time="$secs" -print_final_stats=0 >"$corpus.log" 2>&1) \
        || { tail -40 "$corpus.log"; rm -rf "$corpus"; fail "fuzz target $t found a crash (artifact under fuzz/artifacts/$t)"; }
      grep -E '^#[0-9]+.*DONE' "$corpus.log" | tail -1 || true
      rm -rf "$corpus" "$corpus.log"
    done
  fi
fi

step "all passed"
