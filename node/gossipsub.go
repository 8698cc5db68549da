package node

import (
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshagent/meshagent/discovery"
)

// seenMessagesTTL is how long pubsub tracks a message it has seen, for
// duplicates and for the score's delivery records: 30 s, not 2 minutes.
// Gossip offers a message for 3 s, registry messages are ordered by
// sequence number and envelopes by the replay guard, and every tracked
// message costs memory in every node.
const seenMessagesTTL = 30 * time.Second

// recordMessageMax bounds a registry message that carries a record: the
// record and its framing.
const recordMessageMax = discovery.MaxRecordSize + 64

// peerScoreParams lowers the score of a peer that forwards messages our
// validator rejects (invalid-message deliveries), so that gossipsub prunes
// and eventually graylists it.
func peerScoreParams() *pubsub.PeerScoreParams {
	return &pubsub.PeerScoreParams{
		AppSpecificScore:            func(peer.ID) float64 { return 0 },
		DecayInterval:               time.Second,
		DecayToZero:                 0.01,
		RetainScore:                 10 * time.Minute,
		SeenMsgTTL:                  seenMessagesTTL,
		IPColocationFactorThreshold: 1000, // many agents may share one IP
		Topics:                      map[string]*pubsub.TopicScoreParams{},
	}
}

func topicScoreParams() *pubsub.TopicScoreParams {
	return &pubsub.TopicScoreParams{
		TopicWeight:                    1,
		TimeInMeshQuantum:              time.Second,
		InvalidMessageDeliveriesWeight: -100,
		InvalidMessageDeliveriesDecay:  0.5,
		FirstMessageDeliveriesDecay:    0.5,
		MeshMessageDeliveriesDecay:     0.5,
		MeshFailurePenaltyDecay:        0.5,
	}
}

func peerScoreThresholds() *pubsub.PeerScoreThresholds {
	return &pubsub.PeerScoreThresholds{
		GossipThreshold:             -10,
		PublishThreshold:            -50,
		GraylistThreshold:           -80,
		OpportunisticGraftThreshold: 1,
	}
}

// gossipParams scales gossipsub's own heartbeat (the one that repairs lost
// messages through IHAVE/IWANT) to a fifth of the agent heartbeat, at most
// its default 1 s, so that tests with millisecond heartbeats repair losses
// as production does.
//
// IDONTWANT is kept for messages larger than any registry record
// (recordMessageMax): a record with advertised actions passes gossipsub's
// 1 KiB default, and every node then sends an IDONTWANT per record to each
// mesh peer, which keeps it for three gossip heartbeats. At a cold start
// (every agent's record at once) that was 0.05 MiB per node at N = 200,
// and more with N, to spare a few duplicate records of at most 4 KiB.
func gossipParams(agentHeartbeat time.Duration) pubsub.GossipSubParams {
	p := pubsub.DefaultGossipSubParams()
	p.IDontWantMessageThreshold = max(p.IDontWantMessageThreshold, recordMessageMax)
	if hb := agentHeartbeat / 5; hb < p.HeartbeatInterval {
		p.HeartbeatInterval = max(hb, 10*time.Millisecond)
		p.HeartbeatInitialDelay = min(p.HeartbeatInitialDelay, p.HeartbeatInterval)
	}
	return p
}
