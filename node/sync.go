package node

import (
	"github.com/libp2p/go-libp2p/core/peer"
	p2pprotocol "github.com/libp2p/go-libp2p/core/protocol"
)

// serveBurst and serveEvery bound the sync answers (and revocation pulls)
// one peer gets: an honest node asks at admission, once more three gossip
// heartbeats later, and at most once a heartbeat after that, for each.
const serveBurst = 4

// serveAllowed reports whether p may have another answer of protocol
// which now; past serveBurst it gets one a heartbeat.
func (n *Node) serveAllowed(p peer.ID, which p2pprotocol.ID) bool {
	return n.live.serving.Allow(string(p) + string(which))
}
