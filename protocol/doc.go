// Package protocol holds meshagent's wire types and the checks every message
// passes before anything acts on it.
//
// An Envelope is what travels between agents: sender, recipient (a peer or
// a topic), action, body, timestamp, nonce, correlation ID and the
// capability chain that authorizes the action, signed by the sender's
// identity key over domain-separated bytes. Decider.Decide is the one
// decision function that every entry point (RPC, pubsub, local API) calls:
// it runs the checks cheapest first and records the nonce in the
// ReplayGuard only after everything else passed, so forged messages cannot
// fill the replay cache.
//
// Like package trust, this package does no I/O and reads no clock: every
// check takes now.
//
// # Protocol version
//
// Version is carried in every envelope. Changelog:
//   - 1 (2026-11-25): first version.
package protocol
