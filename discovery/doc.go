// Package discovery is meshagent's view of the mesh without a central
// server: the registry of agents allowed to talk, their liveness as this
// node sees it, and the records exchanged to learn them.
//
// Every agent announces a self-signed record (credential, addresses,
// sequence number, heartbeat interval) and then heartbeats with ever higher
// sequence numbers. Each node decides liveness from what it receives itself
// and trusts no other node's verdict: alive; suspect after SuspectMissed
// missed heartbeats; dead after DeadAfter. A dead agent is refused (code
// dead) for its calls, its messages and any chain in which it is a holder,
// until its own fresh heartbeat, with a higher sequence number and a valid
// credential, brings it back. Records relayed by third parties (the
// join-time exchange) teach a node who exists, never who is alive.
//
// Like trust and protocol, the Registry reads no clock and does no I/O:
// every method takes now. Package node wires it to pubsub and the host.
package discovery
