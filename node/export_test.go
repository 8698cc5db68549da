package node

import (
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshagent/meshagent/discovery"
)

// CurrentRecord lets the external tests see the record a node would send
// in its next hello.
func CurrentRecord(n *Node) (*discovery.Record, error) { return n.own.Record() }

// Registry returns n's registry (tests read sequence numbers).
func Registry(n *Node) *discovery.Registry { return n.registry }

// AdvertCache returns how many advertisements n caches and their size.
func AdvertCache(n *Node) (entries, size int) { return n.adverts.Cached() }

// IdleStreams returns how many idle call streams n keeps (its pool).
func IdleStreams(n *Node) int { return n.pool.idleCount() }

// IdleInbound returns how many call streams of p wait at n for a next
// request.
func IdleInbound(n *Node, p peer.ID) int { return n.rpcIdle.count(p) }

// SetServeIdle sets how long n waits for a next request on a stream.
func SetServeIdle(n *Node, d time.Duration) { n.rpcIdle.timeout.Store(int64(d)) }
