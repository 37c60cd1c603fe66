"""The other side of did-resolver/tests/did_peer_interop.rs: the PyPI packages
`did-peer-2` and `did-peer-4` (independent did:peer implementations) make DIDs and
resolve the DIDs we made.

Reads one JSON request on stdin, writes one JSON answer on stdout:
  {"make2": {"keys": [[purpose_code, multibase], ...], "services": [service, ...]},
   "make4": input_document,
   "resolve": [did, ...]}
  -> {"did2": ..., "did4_long": ..., "did4_short": ..., "resolved": {did: document}}
"""
import json
import sys

import did_peer_2
import did_peer_4


def main():
    req = json.load(sys.stdin)
    out = {"resolved": {}}
    if "make2" in req:
        keys = [
            did_peer_2.KeySpec(did_peer_2.PurposeCode(p), m)
            for p, m in req["make2"]["keys"]
        ]
        out["did2"] = did_peer_2.generate(keys, req["make2"]["services"])
    if "make4" in req:
        out["did4_long"] = did_peer_4.encode(req["make4"])
        out["did4_short"] = did_peer_4.long_to_short(out["did4_long"])
    for did in req.get("resolve", []):
        try:
            if did.startswith("did:peer:2"):
                out["resolved"][did] = did_peer_2.resolve(did)
            elif did.startswith("did:peer:4"):
                out["resolved"][did] = did_peer_4.resolve(did)
            else:
                out["resolved"][did] = {"error": "not a did:peer:2/4"}
        except Exception as e:  # reported to the Rust test, which fails on it
            out["resolved"][did] = {"error": repr(e)}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
