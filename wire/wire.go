// Package wire names everything meshagent puts on the wire by name: the
// libp2p protocol IDs its streams speak, the pubsub topics it publishes
// on, and the domain strings that prefix what it signs or hashes.
//
// The values are part of the protocol: only append, never change. A node
// with another protocol ID or topic cannot talk to the mesh, and a changed
// domain invalidates every signature and every link ID made before. A new
// message version gets a new constant (for example "/meshagent/rpc/2.0.0"
// or "meshagent/v2/envelope\x00"); the old one stays as long as any node
// may speak it.
//
// Each domain ends in a NUL byte, which no domain contains elsewhere, so
// no domain is a prefix of another: a signature made for one purpose can
// never be taken for another, nor for a libp2p signature
// ("libp2p-tls-handshake:", "libp2p-pubsub:").
//
// This package imports nothing of meshagent, so that every package can use
// it.
package wire

// libp2p protocol IDs, one per kind of stream. Every one but
// ProtocolAdmission is open only to admitted peers.
const (
	// ProtocolAdmission is the credential exchange that admits a peer:
	// each side sends its signed registry record (its credential inside).
	// The one protocol open before admission.
	ProtocolAdmission = "/meshagent/admission/1.0.0"
	// ProtocolRPC carries request/reply calls: one signed envelope
	// (DomainEnvelope) each way per stream.
	ProtocolRPC = "/meshagent/rpc/1.0.0"
	// ProtocolRPC2 carries calls one after another on a stream that
	// callers keep and reuse: each request a signed envelope checked on
	// its own, answered by the callee's progress envelopes and its reply,
	// each a uvarint-length-prefixed frame as on ProtocolRPC. A caller
	// sends the next request only after the reply; the callee may close
	// an idle stream, writing first a frame of length zero (it then reads
	// nothing more from it, so a request sent meanwhile was never seen).
	// Callers offer it first and fall back to ProtocolRPC.
	ProtocolRPC2 = "/meshagent/rpc/2.0.0"
	// ProtocolSync is the join-time exchange of registry records and
	// revocations.
	ProtocolSync = "/meshagent/sync/1.0.0"
	// ProtocolRevocations returns the revocations a node holds, for a
	// neighbour whose revocation digest differs.
	ProtocolRevocations = "/meshagent/revocations/1.0.0"
	// ProtocolLeave delivers a signed leave (DomainLeave) straight to each
	// connected peer, which applies it and relays it on TopicRegistry.
	ProtocolLeave = "/meshagent/leave/1.0.0"
	// ProtocolBeat is the heartbeat overlay: one long-lived stream per
	// link, carrying batches of signed heartbeats (DomainBeat).
	ProtocolBeat = "/meshagent/beat/1.0.0"
	// ProtocolRenew is the credential renewal served by issuers: the
	// answer is a new credential (DomainCredential).
	ProtocolRenew = "/meshagent/renew/1.0.0"
	// ProtocolAdvert serves the agent's own signed advertisement of the
	// actions it serves (DomainAdvert), on demand.
	ProtocolAdvert = "/meshagent/advert/1.0.0"
)

// Pubsub topics.
const (
	// TopicRegistry carries signed registry records (DomainAnnounce) and
	// leaves (DomainLeave); heartbeats travel on ProtocolBeat.
	TopicRegistry = "meshagent/v1/registry"
	// TopicRevocations carries anchor-signed revocations
	// (DomainRevocation).
	TopicRevocations = "meshagent/v1/revocations"
)

// Signature domains: each prefixes the bytes one kind of signature covers.
const (
	// DomainCredential: an anchor signs an agent's credential body.
	DomainCredential = "meshagent/v1/credential\x00"
	// DomainLink: a token link's signer (the anchor for link 0, the
	// previous link's holder after) signs the chain hash of the links
	// before it, then the link's body.
	DomainLink = "meshagent/v1/link\x00"
	// DomainRevocation: an anchor signs a revocation body.
	DomainRevocation = "meshagent/v1/revocation\x00"
	// DomainEnvelope: an agent signs the body of every envelope it sends
	// (calls, replies, errors, topic messages).
	DomainEnvelope = "meshagent/v1/envelope\x00"
	// DomainAnnounce: an agent signs its own registry record (credential,
	// addresses, sequence number, heartbeat interval).
	DomainAnnounce = "meshagent/v1/announce\x00"
	// DomainLeave: an agent signs its leave: its key, sequence number and
	// timestamp.
	DomainLeave = "meshagent/v1/leave\x00"
	// DomainBeat: an agent signs each heartbeat: its key, sequence number
	// and timestamp.
	DomainBeat = "meshagent/v1/beat\x00"
	// DomainAdvert: an agent signs its advertisement, the description
	// and schemas of the actions it serves.
	DomainAdvert = "meshagent/v1/advert\x00"
	// DomainAuditCheckpoint: a daemon signs each checkpoint of its audit
	// log: the hash of the line before it, its line number and its time.
	DomainAuditCheckpoint = "meshagent/v1/audit-checkpoint\x00"
)

// Hash domains: each prefixes a SHA-256 input, so that these hashes can
// never equal one another or a hash made for something else.
const (
	// DomainRoot starts a token's chain hash, followed by the anchor key:
	// it binds link 0 to the anchor.
	DomainRoot = "meshagent/v1/root\x00"
	// DomainLinkID starts the hash a link ID is cut from, followed by the
	// signer's key, the chain hash before the link and the link's body.
	DomainLinkID = "meshagent/v1/link-id\x00"
	// DomainAuditLine starts the hash of one audit log line (its bytes as
	// written, without the newline), which the next line carries.
	DomainAuditLine = "meshagent/v1/audit-line\x00"
)
