package node

// Stats is a snapshot of what a node counts and holds.
type Stats struct {
	// Agents is how many agents the registry lists, this one included.
	Agents int
	// Credential says when this agent's credential expires and whether
	// its renewal is overdue.
	Credential CredentialStatus
	// BeatLinks is how many beat neighbours this node has.
	BeatLinks int
	// BeatBytesIn is the bytes of heartbeat batches (with the records,
	// leaves and revocations they carry) received.
	BeatBytesIn int64
	// RecordsSent is how many of its own records this agent published on
	// the registry topic (each goes to every node).
	RecordsSent int64
	// PubsubBytesIn is the bytes of pubsub RPCs (messages, gossip and
	// control, before framing) received.
	PubsubBytesIn int64
	// Throttled is how many requests and messages were refused unchecked
	// because their sender had spent its rejection budget.
	Throttled int64
	// Gated is how many streams and connections were refused, unread,
	// because their peer had not been admitted.
	Gated int64
	// ReplayNonces is how many nonces the replay guard remembers: about
	// the envelopes accepted over the last replay window (about 10 bytes
	// each, at most 64 MiB).
	ReplayNonces int
	// Revocations is how many revocations this node holds.
	Revocations int
}

// GossipBytesIn is the bytes of pubsub RPCs and heartbeat batches
// received: the node's share of the mesh's registry and liveness traffic
// (and of application pubsub, when there is any).
func (s Stats) GossipBytesIn() int64 { return s.BeatBytesIn + s.PubsubBytesIn }

// Stats returns what the node counts and holds now.
func (n *Node) Stats() Stats {
	return Stats{
		Agents:        n.registry.Len(),
		Credential:    n.renewer.Status(),
		BeatLinks:     n.beats.Links(),
		BeatBytesIn:   n.beats.BytesIn(),
		RecordsSent:   n.recordsSent.Load(),
		PubsubBytesIn: n.pubsubIn.Load(),
		Throttled:     n.gate.Throttles(),
		Gated:         n.gate.Gated(),
		ReplayNonces:  n.decider.Replay.Len(),
		Revocations:   n.revs.Len(),
	}
}
