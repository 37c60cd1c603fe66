#!/usr/bin/env bash
# The main job: a guided run of what mpc-did does, in a throw-away wallet directory.
# (Issue 7 replaces this tour with `mpc-did demo`: mediator + parties + a real MPyC run.)
set -euo pipefail
cd "$(dirname "$0")"
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
echo "building mpc-did (release; the first build takes a few minutes)..."
cargo build --release -q -p mpc-did
bin=$PWD/${CARGO_TARGET_DIR:-target}/release/mpc-did
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
alice="$bin --home $tmp/alice"
bob="$bin --home $tmp/bob"

echo; echo "== 1. Alice and Bob each create a did:key identity in their own wallet"
$alice id create --name alice
$bob id create --name bob
alice_did=$($alice --json id show alice | python3 -c 'import json,sys; print(json.load(sys.stdin)["did"])')
bob_did=$($bob --json id show bob | python3 -c 'import json,sys; print(json.load(sys.stdin)["did"])')

echo; echo "== 2. Anyone can resolve Alice's DID to its DID document (X25519 key derived per the did:key spec)"
$bob resolve "$alice_did"

echo; echo "== 3. Alice sends Bob an authcrypt DIDComm v2 message; Bob unpacks it"
echo '{"id":"1","type":"https://didcomm.org/basicmessage/2.0/message","body":{"content":"hello Bob"}}' \
  | $alice didcomm pack --to "$bob_did" --from alice --mode authcrypt - > "$tmp/msg.json"
head -c 300 "$tmp/msg.json"; echo " ..."
$bob didcomm unpack "$tmp/msg.json"

echo; echo "== 4. Alice invites others with a DIDComm Out-of-Band 2.0 invitation"
$alice invite --from alice
