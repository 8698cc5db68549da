package node

import "github.com/meshagent/meshagent/discovery"

// CurrentRecord lets the external tests see the record a node would send
// in its next hello.
func CurrentRecord(n *Node) (*discovery.Record, error) { return n.own.Record() }

// Registry returns n's registry (tests read sequence numbers).
func Registry(n *Node) *discovery.Registry { return n.registry }

// AdvertCache returns how many advertisements n caches and their size.
func AdvertCache(n *Node) (entries, size int) { return n.adverts.Cached() }
