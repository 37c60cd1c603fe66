// Veramo 7 (`@veramo/did-comm`, pinned in package-lock.json) as an independent DIDComm v2
// peer for mpc-did's interop tests: crates/didcomm/tests/interop_veramo.rs (the envelope
// matrix) and mediator/tests/interop_veramo_mediation.rs (Veramo's mediation client against
// the real mpc-did-mediator binary).
//
// Protocol: one JSON request on stdin, one JSON answer on stdout ({"error": "..."} when
// Veramo throws). Every identity is a did:key imported from a 32-byte Ed25519 seed (hex),
// resolved by Veramo's own did:key resolver; `services` adds DIDCommMessaging services to
// a resolved did:key document (what an invitation or a mediation grant tells a sender).
//
// Ops:
//   pack      {seed, message, packing: none|jws|anoncrypt|authcrypt, enc?}   -> {packed}
//   unpack    {seed, packed}                                               -> {message, metadata}
//   mediate   {seed, mediator, services, spec_created_time}                -> {steps: [...]}
//   send      {seed, message, packing, services}                           -> {sent}
//   build     {seed, mediator}        -> {messages}: Veramo's mediate-request, recipient-update, delivery-request
//   handle    {seed, raw, services}   -> {type, data, threadId, from}: a plaintext through Veramo's handlers
import { createAgent } from '@veramo/core'
import { KeyManager, MemoryKeyStore, MemoryPrivateKeyStore } from '@veramo/key-manager'
import { KeyManagementSystem } from '@veramo/kms-local'
import { DIDManager, MemoryDIDStore } from '@veramo/did-manager'
import { KeyDIDProvider, getDidKeyResolver } from '@veramo/did-provider-key'
import { DIDResolverPlugin } from '@veramo/did-resolver'
import { MessageHandler } from '@veramo/message-handler'
import {
  DIDComm,
  DIDCommMessageHandler,
  CoordinateMediationV3RecipientMessageHandler,
  PickupRecipientMessageHandler,
  createV3MediateRequestMessage,
  createV3RecipientUpdateMessage,
  createV3DeliveryRequestMessage,
} from '@veramo/did-comm'
import { ed25519 } from '@noble/curves/ed25519'

async function readStdin() {
  const chunks = []
  for await (const c of process.stdin) chunks.push(c)
  return JSON.parse(Buffer.concat(chunks).toString('utf8'))
}

const hex = (b) => Buffer.from(b).toString('hex')

// The DID documents a resolver returns: Veramo's did:key documents, plus the services
// the request names for some DIDs.
function resolver(services) {
  const keyResolver = getDidKeyResolver().key
  return {
    key: async (did, parsed, r, options) => {
      const res = await keyResolver(did, parsed, r, options)
      const extra = services?.[parsed.did]
      if (res.didDocument && extra) {
        res.didDocument.service = [...(res.didDocument.service ?? []), ...extra]
      }
      return res
    },
  }
}

async function agentFor(seedHex, services) {
  const agent = createAgent({
    plugins: [
      new KeyManager({
        store: new MemoryKeyStore(),
        kms: { local: new KeyManagementSystem(new MemoryPrivateKeyStore()) },
      }),
      new DIDManager({
        store: new MemoryDIDStore(),
        defaultProvider: 'did:key',
        providers: { 'did:key': new KeyDIDProvider({ defaultKms: 'local' }) },
      }),
      new DIDResolverPlugin(resolver(services)),
      new DIDComm(),
      new MessageHandler({
        messageHandlers: [
          new DIDCommMessageHandler(),
          new CoordinateMediationV3RecipientMessageHandler(),
          new PickupRecipientMessageHandler(),
        ],
      }),
    ],
  })
  let did = null
  if (seedHex) {
    const seed = Buffer.from(seedHex, 'hex')
    const pub = ed25519.getPublicKey(seed)
    // did:key of an Ed25519 key: multicodec 0xed01 + key, base58btc, 'z' prefix.
    const { base58btc } = await import('multiformats/bases/base58')
    did = 'did:key:' + base58btc.encode(Uint8Array.from([0xed, 0x01, ...pub]))
    await agent.didManagerImport({
      did,
      provider: 'did:key',
      controllerKeyId: hex(pub),
      keys: [{ kid: hex(pub), type: 'Ed25519', kms: 'local', privateKeyHex: hex(seed) }],
    })
  }
  return { agent, did }
}

// Veramo's createV3* builders set `created_time` to an ISO 8601 string; DIDComm v2 says
// it is an integer of UTC epoch seconds. With `spec_created_time` the script converts it
// before packing (the deviation is documented in spec/didcomm.md §8).
function fixCreatedTime(msg, spec) {
  if (spec && typeof msg.created_time === 'string') {
    msg.created_time = Math.floor(Date.parse(msg.created_time) / 1000)
  }
  return msg
}

async function sendToMediator(agent, msg, spec) {
  const packed = await agent.packDIDCommMessage({
    message: fixCreatedTime(msg, spec),
    packing: 'authcrypt',
  })
  const res = await agent.sendDIDCommMessage({
    packedMessage: packed,
    messageId: msg.id,
    recipientDidUrl: msg.to[0],
  })
  const ret = res.returnMessage
  return { type: ret?.type ?? null, data: ret?.data ?? null, returned: !!ret }
}

async function main() {
  const req = await readStdin()
  const { agent, did } = await agentFor(req.seed, req.services)
  switch (req.op) {
    case 'did':
      return { did }
    case 'pack': {
      const options = req.enc ? { enc: req.enc } : undefined
      const packed = await agent.packDIDCommMessage({
        message: req.message,
        packing: req.packing,
        options,
      })
      return { packed: packed.message }
    }
    case 'unpack': {
      const u = await agent.unpackDIDCommMessage({ message: req.packed })
      return { message: u.message, metadata: u.metaData }
    }
    case 'mediate': {
      // Veramo's Coordinate Mediation 3.0 client: mediate-request, recipient-update adding
      // its DID, then Message Pickup 3.0 delivery-request (its handler acknowledges with
      // messages-received). Each step's outcome is reported, failures included.
      const steps = []
      const step = async (name, f) => {
        try {
          steps.push({ name, ...(await f()) })
        } catch (e) {
          steps.push({ name, error: String(e?.cause?.errors?.map(String) ?? e) })
        }
      }
      await step('mediate-request', () =>
        sendToMediator(agent, createV3MediateRequestMessage(did, req.mediator), req.spec_created_time),
      )
      await step('recipient-update', () =>
        sendToMediator(
          agent,
          createV3RecipientUpdateMessage(did, req.mediator, [{ recipient_did: did, action: 'add' }]),
          req.spec_created_time,
        ),
      )
      await step('delivery-request', () =>
        sendToMediator(agent, createV3DeliveryRequestMessage(did, req.mediator), req.spec_created_time),
      )
      return { did, steps }
    }
    case 'build': {
      // Veramo's own CM 3.0 / Pickup 3.0 client messages, as plaintext (the test packs
      // them with a conformant authcrypt: the bridged mediation test).
      return {
        did,
        messages: [
          createV3MediateRequestMessage(did, req.mediator),
          createV3RecipientUpdateMessage(did, req.mediator, [{ recipient_did: did, action: 'add' }]),
          createV3DeliveryRequestMessage(did, req.mediator),
        ],
      }
    }
    case 'handle': {
      // A plaintext message through Veramo's message handlers (the CM 3.0 recipient and
      // Pickup recipient handlers among them), as if it had arrived.
      const m = await agent.handleMessage({ raw: req.raw, save: false })
      return { type: m.type, data: m.data, threadId: m.threadId ?? null, from: m.from ?? null }
    }
    case 'send': {
      // Veramo as a sender: pack for `to` and send along its DIDCommMessaging service,
      // wrapped in forwards for its routing keys (Routing 2.0).
      const packed = await agent.packDIDCommMessage({ message: req.message, packing: req.packing })
      await agent.sendDIDCommMessage({
        packedMessage: packed,
        messageId: req.message.id,
        recipientDidUrl: req.message.to[0],
      })
      return { sent: true }
    }
    default:
      throw new Error(`unknown op ${req.op}`)
  }
}

main().then(
  (out) => process.stdout.write(JSON.stringify(out)),
  (e) => process.stdout.write(JSON.stringify({ error: String(e?.message ?? e) })),
)
