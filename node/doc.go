// Package node is the embeddable meshagent agent: a libp2p host that speaks
// TLS 1.3 only (TCP and QUIC), admits only peers that present a valid
// credential, and runs every RPC request and pubsub message through the
// protocol's one decision function before any handler sees it. Every call
// and message, accepted or rejected, is written to a JSON-lines audit log.
//
// Use DefaultConfig (or LocalConfig in tests), fill in the identity,
// credential, anchors and tokens, then New, Start and, when done, Close.
package node
