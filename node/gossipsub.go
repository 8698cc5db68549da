package node

import (
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
)

// seenMessagesTTL is how long pubsub tracks a message it has seen, for
// duplicates and for the score's delivery records: 30 s, not 2 minutes.
// Gossip offers a message for 3 s, registry messages are ordered by
// sequence number and envelopes by the replay guard, and every tracked
// message costs memory in every node.
const seenMessagesTTL = 30 * time.Second

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
func gossipParams(agentHeartbeat time.Duration) pubsub.GossipSubParams {
	p := pubsub.DefaultGossipSubParams()
	if hb := agentHeartbeat / 5; hb < p.HeartbeatInterval {
		p.HeartbeatInterval = max(hb, 10*time.Millisecond)
		p.HeartbeatInitialDelay = min(p.HeartbeatInitialDelay, p.HeartbeatInterval)
	}
	return p
}
