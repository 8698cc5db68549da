// Package renewal renews credentials: a node renews its own from an
// issuer (or itself, when it holds its anchor's key) once RenewAfter of
// its lifetime has passed, and an issuer serves renewals of its own
// anchor's credentials to agents that present a valid one.
package renewal

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-msgio"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node/internal/limit"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

// Deps is what renewal needs of the node.
type Deps struct {
	Self trust.PublicKey
	// Issuer, when set, is this node's anchor key: it serves renewals and
	// renews its own credential itself.
	Issuer   *trust.AnchorKey
	Verifier *trust.Verifier
	Registry *discovery.Registry
	Host     func() host.Host
	Clock    func() time.Time
	Logger   *slog.Logger
	// Timeout bounds one exchange (the admission timeout).
	Timeout           time.Duration
	HeartbeatInterval time.Duration
	// RenewAfter is the fraction of its lifetime after which a credential
	// is renewed.
	RenewAfter float64
	// Credential returns this agent's current credential.
	Credential func() *trust.Credential
	// ServeAllowed reports whether p may have another request answered
	// now; past it, requests are answered flood unread.
	ServeAllowed func(p peer.ID) bool
	// Served is told of each request served (err nil: renewed): the node
	// audits it and charges p for what it should not have sent.
	Served func(p peer.ID, err error)
	// Renewed is given this agent's renewed credential.
	Renewed func(c *trust.Credential)
}

// Renewer renews. Its methods are safe for concurrent use.
type Renewer struct {
	d        Deps
	renewals *limit.Keyed // renewals served per agent
	renewing atomic.Bool
}

// New returns a renewer.
func New(d Deps) *Renewer {
	return &Renewer{d: d, renewals: limit.New(d.HeartbeatInterval, 1)}
}

// Handle serves a renewal: the requester is the TLS-authenticated
// peer, its current credential must be its own, valid and unrevoked, and it
// must not be dead; the new credential has the same subject, name and
// lifetime, starting now.
func (r *Renewer) Handle(s network.Stream) {
	defer s.Close()
	remote := s.Conn().RemotePeer()
	// A few requests at once and one a heartbeat per peer (an honest agent
	// renews a day's credential once): past that, a request is answered
	// flood unread, with no check and no audit line.
	if !r.d.ServeAllowed(remote) {
		b, _ := proto.Marshal(&protocolpb.RenewResponse{ErrorCode: string(protocol.CodeFlood), ErrorDetail: "renewal requests past the rate"})
		_ = s.SetDeadline(time.Now().Add(r.d.Timeout))
		if msgio.NewVarintWriter(s).WriteMsg(b) != nil {
			s.Reset()
		}
		return
	}
	_ = s.SetDeadline(time.Now().Add(r.d.Timeout))
	raw, err := msgio.NewVarintReaderSize(s, trust.MaxCredentialSize+64).ReadMsg()
	if err != nil {
		s.Reset()
		return
	}
	resp := &protocolpb.RenewResponse{}
	cred, err := r.renewFor(remote, raw)
	if err != nil {
		code := trust.CodeOf(err)
		if code == "" {
			code = trust.CodeMalformed
		}
		resp.ErrorCode, resp.ErrorDetail = string(code), trust.DetailOf(err)
	} else {
		resp.Credential = cred.Proto()
	}
	r.d.Served(remote, err)
	b, _ := proto.Marshal(resp)
	if msgio.NewVarintWriter(s).WriteMsg(b) != nil {
		s.Reset()
	}
}

func (r *Renewer) renewFor(remote peer.ID, raw []byte) (*trust.Credential, error) {
	if r.d.Issuer == nil {
		return nil, protocol.Reject(protocol.CodeUnavailable, "this node is not an issuer")
	}
	var req protocolpb.RenewRequest
	if err := proto.Unmarshal(raw, &req); err != nil {
		return nil, protocol.Reject(trust.CodeMalformed, "renew request: %v", err)
	}
	old, err := trust.CredentialFromProto(req.Credential)
	if err != nil {
		return nil, err
	}
	k, err := trust.PublicKeyFromPeerID(remote)
	if err != nil {
		return nil, err
	}
	if !old.Subject.Equal(k) {
		return nil, protocol.Reject(protocol.CodeImpersonation, "credential is for %s, presented by %s", old.Subject, remote)
	}
	// Renewal keeps the issuer: a credential of another anchor (a
	// partner's, or one removed from the policy after a compromise) is
	// never laundered into one of this issuer's anchor.
	if own := r.d.Issuer.Public(); !old.Issuer.Equal(own) {
		return nil, protocol.Reject(trust.CodeUntrustedRoot, "credential issued by anchor %s; this issuer renews only credentials of its own anchor %s", old.Issuer, own)
	}
	now := r.d.Clock()
	if err := r.d.Registry.Admit(k, now); err != nil && trust.CodeOf(err) == protocol.CodeDead {
		return nil, err
	}
	if !r.renewals.Allow(string(remote)) {
		return nil, protocol.Reject(protocol.CodeFlood, "at most one renewal a heartbeat (%s) per agent", r.d.HeartbeatInterval)
	}
	if err := r.d.Verifier.VerifyCredential(old, now); err != nil {
		return nil, err
	}
	return trust.IssueCredential(r.d.Issuer, k, old.Name, now, old.Expires.Sub(old.NotBefore))
}

// renewFrom asks issuer p for a fresh credential.
func (r *Renewer) renewFrom(ctx context.Context, p peer.ID) (*trust.Credential, error) {
	s, err := r.d.Host().NewStream(ctx, p, wire.ProtocolRenew)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(r.d.Timeout))
	req, _ := proto.Marshal(&protocolpb.RenewRequest{Credential: r.d.Credential().Proto()})
	if err := msgio.NewVarintWriter(s).WriteMsg(req); err != nil {
		s.Reset()
		return nil, err
	}
	raw, err := msgio.NewVarintReaderSize(s, trust.MaxCredentialSize+4096).ReadMsg()
	if err != nil {
		s.Reset()
		return nil, err
	}
	var resp protocolpb.RenewResponse
	if err := proto.Unmarshal(raw, &resp); err != nil {
		return nil, err
	}
	if resp.ErrorCode != "" {
		return nil, &trust.Error{Code: trust.Code(resp.ErrorCode), Link: -1, Detail: resp.ErrorDetail}
	}
	c, err := trust.CredentialFromProto(resp.Credential)
	if err != nil {
		return nil, err
	}
	if !c.Subject.Equal(r.d.Self) {
		return nil, fmt.Errorf("issuer %s returned a credential for %s", p, c.Subject)
	}
	if err := r.d.Verifier.VerifyCredential(c, r.d.Clock()); err != nil {
		return nil, err
	}
	return c, nil
}

// Status says when the credential expires and whether its
// renewal is overdue.
type Status struct {
	Expires  time.Time `json:"expires"`
	RenewAt  time.Time `json:"renew_at"`
	TimeLeft string    `json:"time_left"`
	Warning  string    `json:"warning,omitempty"`
}

// Status reports on the agent's credential.
func (r *Renewer) Status() Status {
	c := r.d.Credential()
	now := r.d.Clock()
	life := c.Expires.Sub(c.NotBefore)
	st := Status{Expires: c.Expires.UTC(), RenewAt: c.NotBefore.Add(time.Duration(float64(life) * r.d.RenewAfter)).UTC(),
		TimeLeft: c.Expires.Sub(now).Round(time.Second).String()}
	switch {
	case !now.Before(c.Expires):
		st.Warning = "credential expired: this agent is refused by every node until it gets a new one"
	case now.After(c.NotBefore.Add(life/2)) && now.After(st.RenewAt):
		st.Warning = fmt.Sprintf("credential renewal overdue: %s left and no issuer has renewed it", st.TimeLeft)
	}
	return st
}

// MaybeRenew starts a renewal once RenewAfter of the credential's lifetime
// has passed, from this node itself when it is an issuer for its anchor, or
// from any connected peer that serves the renewal protocol. It warns from
// half-life on while no renewal succeeds.
func (r *Renewer) MaybeRenew(ctx context.Context) {
	st := r.Status()
	if r.d.Clock().Before(st.RenewAt) || !r.renewing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer r.renewing.Store(false)
		c, err := r.renew(ctx)
		if err != nil {
			if w := r.Status().Warning; w != "" {
				r.d.Logger.Warn("credential renewal failed", "warning", w, "err", err)
			}
			return
		}
		r.d.Renewed(c)
	}()
}

func (r *Renewer) renew(ctx context.Context) (*trust.Credential, error) {
	old := r.d.Credential()
	if r.d.Issuer != nil && r.d.Issuer.Public().Equal(old.Issuer) {
		return trust.IssueCredential(r.d.Issuer, r.d.Self, old.Name, r.d.Clock(), old.Expires.Sub(old.NotBefore))
	}
	h := r.d.Host()
	var last error = fmt.Errorf("no issuer reachable")
	for _, p := range h.Network().Peers() {
		if ok, _ := h.Peerstore().SupportsProtocols(p, wire.ProtocolRenew); len(ok) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(ctx, r.d.Timeout)
		c, err := r.renewFrom(ctx, p)
		cancel()
		if err == nil {
			return c, nil
		}
		last = err
	}
	return nil, last
}
