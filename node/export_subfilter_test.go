package node

import "github.com/libp2p/go-libp2p/core/peer"

// RouterPeers lets the external tests see the peers the pubsub router
// keeps as subscribed to topic, joined or not.
func RouterPeers(n *Node, topic string) []peer.ID {
	n.mu.Lock()
	ps := n.ps
	n.mu.Unlock()
	return ps.ListPeers(topic)
}
