#!/usr/bin/env python3
"""Interop peer: SICPA's Python DIDComm v2 implementation (PyPI `didcomm`, 0.3.2).

Driven by crates/didcomm/tests/interop_python.rs: one JSON request on stdin, one JSON
answer on stdout. Requests:

  {"op": "pack", "mode": "authcrypt"|"anoncrypt"|"signed", "message": {...},
   "to": DID, "from": DID, "anon_enc": "A256CBC-HS512"|"XC20P"|"A256GCM", "docs": [DID document...], "secrets": [private JWK with kid...]}
  -> {"packed": "<json string>"}

  {"op": "unpack", "packed": "<json string>", "docs": [...], "secrets": [...]}
  -> {"message": {...}, "metadata": {"encrypted": bool, "authenticated": bool,
      "non_repudiation": bool, "anonymous_sender": bool, "encrypted_from": kid|null,
      "sign_from": kid|null, "enc_alg_auth": str|null, "enc_alg_anon": str|null}}

The DID documents are what `mpc-did resolve --json` prints. SICPA's library has no
did:key resolver and does not understand `Multikey` verification methods, so this script
rewrites every `Multikey` method (publicKeyMultibase, multicodec ed25519-pub 0xed /
x25519-pub 0xec) as the equivalent `JsonWebKey2020` method (publicKeyJwk), and moves
methods embedded in relationships into verificationMethod. Nothing else is changed.
"""
import asyncio
import base64
import json
import sys

import base58
from didcomm.common.algorithms import AnonCryptAlg
from didcomm.common.resolvers import ResolversConfig
from didcomm.common.types import (
    VerificationMaterial,
    VerificationMaterialFormat,
    VerificationMethodType,
)
from didcomm.did_doc.did_doc import DIDDoc
from didcomm.did_doc.did_resolver_in_memory import DIDResolverInMemory
from didcomm.pack_encrypted import PackEncryptedConfig, pack_encrypted
from didcomm.pack_signed import pack_signed
from didcomm.secrets.secrets_resolver import Secret
from didcomm.secrets.secrets_resolver_in_memory import SecretsResolverInMemory
from didcomm.unpack import unpack

CODECS = {b"\xed\x01": "Ed25519", b"\xec\x01": "X25519"}
ANON_ENC = {
    "A256CBC-HS512": AnonCryptAlg.A256CBC_HS512_ECDH_ES_A256KW,
    "XC20P": AnonCryptAlg.XC20P_ECDH_ES_A256KW,
    "A256GCM": AnonCryptAlg.A256GCM_ECDH_ES_A256KW,
}
RELATIONS = ["authentication", "assertionMethod", "keyAgreement",
             "capabilityInvocation", "capabilityDelegation"]


def b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def to_jwk_method(vm: dict) -> dict:
    if vm.get("type") != "Multikey":
        return vm
    mb = vm["publicKeyMultibase"]
    assert mb.startswith("z"), "only base58btc multibase"
    raw = base58.b58decode(mb[1:])
    crv = CODECS[raw[:2]]
    return {
        "id": vm["id"],
        "type": "JsonWebKey2020",
        "controller": vm["controller"],
        "publicKeyJwk": {"kty": "OKP", "crv": crv, "x": b64u(raw[2:])},
    }


def convert_doc(doc: dict) -> DIDDoc:
    doc = dict(doc)
    vms = [to_jwk_method(vm) for vm in doc.get("verificationMethod", [])]
    for rel in RELATIONS:
        refs = []
        for entry in doc.get(rel, []):
            if isinstance(entry, dict):
                vms.append(to_jwk_method(entry))
                refs.append(entry["id"])
            else:
                refs.append(entry if not entry.startswith("#") else doc["id"] + entry)
        if rel in doc:
            doc[rel] = refs
    doc["verificationMethod"] = vms
    return DIDDoc.deserialize(doc)


def resolvers(req: dict) -> ResolversConfig:
    secrets = [
        Secret(
            kid=jwk["kid"],
            type=VerificationMethodType.JSON_WEB_KEY_2020,
            verification_material=VerificationMaterial(
                format=VerificationMaterialFormat.JWK, value=json.dumps(jwk)
            ),
        )
        for jwk in req.get("secrets", [])
    ]
    docs = [convert_doc(d) for d in req.get("docs", [])]
    return ResolversConfig(
        secrets_resolver=SecretsResolverInMemory(secrets),
        did_resolver=DIDResolverInMemory(docs),
    )


async def handle(req: dict) -> dict:
    cfg = resolvers(req)
    if req["op"] == "pack":
        mode = req["mode"]
        if mode == "signed":
            res = await pack_signed(cfg, req["message"], sign_frm=req["from"])
            return {"packed": res.packed_msg}
        res = await pack_encrypted(
            cfg,
            req["message"],
            to=req["to"],
            frm=req["from"] if mode == "authcrypt" else None,
            pack_config=PackEncryptedConfig(
                forward=False,
                enc_alg_anon=ANON_ENC[req.get("anon_enc", "A256CBC-HS512")],
            ),
        )
        return {"packed": res.packed_msg}
    if req["op"] == "unpack":
        res = await unpack(cfg, req["packed"])
        m = res.metadata
        alg = lambda a: None if a is None else str(a.value.alg) + "/" + str(a.value.enc)  # noqa: E731
        return {
            "message": res.message.as_dict(),
            "metadata": {
                "encrypted": m.encrypted,
                "authenticated": m.authenticated,
                "non_repudiation": m.non_repudiation,
                "anonymous_sender": m.anonymous_sender,
                "encrypted_from": m.encrypted_from,
                "sign_from": m.sign_from,
                "enc_alg_auth": alg(m.enc_alg_auth),
                "enc_alg_anon": alg(m.enc_alg_anon),
            },
        }
    raise ValueError("unknown op " + repr(req["op"]))


def main() -> int:
    req = json.load(sys.stdin)
    try:
        out = asyncio.run(handle(req))
    except Exception as e:  # report, don't traceback: the Rust side shows the error
        print(json.dumps({"error": type(e).__name__ + ": " + str(e)}))
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
