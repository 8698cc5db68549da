package node

import (
	"context"
	"fmt"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/trust"
)

// Action is what an agent advertises of one action it serves: its scope,
// a one-line description, and the JSON Schema of its input and (when
// known) output. Limits: discovery.MaxActions actions,
// discovery.MaxDescription bytes of description, discovery.MaxSchema bytes
// per schema, discovery.MaxAdvertSize for the whole signed advertisement.
type Action = discovery.Action

// Advertisement is an agent's verified advertisement.
type Advertisement = discovery.Advertisement

// Advertise adds a to the actions this agent advertises, replacing an
// earlier one of the same scope. The advertisement is signed by the
// agent; its signed record names the scopes and the advertisement's
// SHA-256, and is re-signed and re-announced (at most
// liveness.ChangeBurst at once, then one every two heartbeats; changes in
// between go out together). Advertising does not register a handler.
func (n *Node) Advertise(a Action) error {
	if err := n.adverts.Set(a, false); err != nil {
		return fmt.Errorf("node: advertise: %w", err)
	}
	return nil
}

// Unadvertise stops advertising scope.
func (n *Node) Unadvertise(scope string) error {
	return n.adverts.Set(Action{Scope: scope}, true)
}

// Advertisement returns the advertisement of agent p: fetched from p on
// demand (wire.ProtocolAdvert), verified against the digest in p's signed
// record and p's signature, and cached by digest. The action names alone
// are in Peers.
func (n *Node) Advertisement(ctx context.Context, p peer.ID) (*Advertisement, error) {
	if n.host() == nil {
		return nil, ErrNotStarted
	}
	k, err := trust.PublicKeyFromPeerID(p)
	if err != nil {
		return nil, err
	}
	return n.adverts.Fetch(ctx, k)
}

// reach adds p's record addresses when it is not a neighbour and admits
// it when it is not listed, as a call does.
func (n *Node) reach(ctx context.Context, p peer.ID) error {
	h := n.host()
	if h == nil {
		return ErrNotStarted
	}
	if h.Network().Connectedness(p) != network.Connected {
		if k, err := trust.PublicKeyFromPeerID(p); err == nil {
			if rec := n.registry.Record(k); rec != nil {
				h.Peerstore().AddAddrs(p, rec.Addrs(), peerstore.TempAddrTTL)
			}
		}
	}
	if !n.isAdmitted(p) {
		return n.admission.Admit(ctx, p)
	}
	return nil
}
