//go:build !meshsim

package node

import (
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// A production node has no simulation hooks (sim_on.go, tag meshsim):
// these are the constant answers of a node that no one freezes, cuts or
// makes lossy.

func (*Node) simClosed()                         {}
func (*Node) frozen() bool                       { return false }
func (*Node) dropSimulated(peer.ID, *pubsub.RPC) {}

// blockedHook is nil: the gate asks no filter.
func (*Node) blockedHook() func(peer.ID) bool { return nil }

// frozenHook and lostHook are nil: the overlay is never paused nor lossy.
func (*Node) frozenHook() func() bool      { return nil }
func (*Node) lostHook() func(peer.ID) bool { return nil }

// simulatedHost builds no host: production hosts are built by buildHost.
func (*Node) simulatedHost(network.ResourceManager) (host.Host, bool, error) { return nil, false, nil }
