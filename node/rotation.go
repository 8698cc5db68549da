package node

import (
	"context"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-msgio"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/node/internal/audit"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

// handleRenew serves a renewal: the requester is the TLS-authenticated
// peer, its current credential must be its own, valid and unrevoked, and it
// must not be dead; the new credential has the same subject, name and
// lifetime, starting now.
func (n *Node) handleRenew(s network.Stream) {
	defer s.Close()
	remote := s.Conn().RemotePeer()
	// A few requests at once and one a heartbeat per peer (an honest agent
	// renews a day's credential once): past that, a request is answered
	// flood unread, with no check and no audit line.
	if !n.serveAllowed(remote, wire.ProtocolRenew) {
		b, _ := proto.Marshal(&protocolpb.RenewResponse{ErrorCode: string(protocol.CodeFlood), ErrorDetail: "renewal requests past the rate"})
		_ = s.SetDeadline(time.Now().Add(n.cfg.AdmissionTimeout))
		if msgio.NewVarintWriter(s).WriteMsg(b) != nil {
			s.Reset()
		}
		return
	}
	_ = s.SetDeadline(time.Now().Add(n.cfg.AdmissionTimeout))
	raw, err := msgio.NewVarintReaderSize(s, trust.MaxCredentialSize+64).ReadMsg()
	if err != nil {
		s.Reset()
		return
	}
	resp := &protocolpb.RenewResponse{}
	cred, err := n.renewFor(remote, raw)
	if code := trust.CodeOf(err); forwarderFault[code] {
		n.gate.Penalize(remote, code)
	}
	if err != nil {
		resp.ErrorCode, resp.ErrorDetail = string(codeOrDefault(err, trust.CodeMalformed)), rejectionDetail(err)
	} else {
		resp.Credential = cred.Proto()
	}
	r := n.record(audit.In, audit.Renewal, remote.String())
	r.Decision = audit.Accept
	if err != nil {
		reject(&r, trust.Code(resp.ErrorCode), resp.ErrorDetail)
	}
	n.audit.Write(r)
	b, _ := proto.Marshal(resp)
	if msgio.NewVarintWriter(s).WriteMsg(b) != nil {
		s.Reset()
	}
}

func (n *Node) renewFor(remote peer.ID, raw []byte) (*trust.Credential, error) {
	if n.cfg.Issuer == nil {
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
	if own := n.cfg.Issuer.Public(); !old.Issuer.Equal(own) {
		return nil, protocol.Reject(trust.CodeUntrustedRoot, "credential issued by anchor %s; this issuer renews only credentials of its own anchor %s", old.Issuer, own)
	}
	now := n.now()
	if err := n.registry.Admit(k, now); err != nil && trust.CodeOf(err) == protocol.CodeDead {
		return nil, err
	}
	if !n.live.renewals.Allow(string(remote)) {
		return nil, protocol.Reject(protocol.CodeFlood, "at most one renewal a heartbeat (%s) per agent", n.cfg.HeartbeatInterval)
	}
	if err := n.verifier.VerifyCredential(old, now); err != nil {
		return nil, err
	}
	return trust.IssueCredential(n.cfg.Issuer, k, old.Name, now, old.Expires.Sub(old.NotBefore))
}

// renewFrom asks issuer p for a fresh credential.
func (n *Node) renewFrom(ctx context.Context, p peer.ID) (*trust.Credential, error) {
	s, err := n.host().NewStream(ctx, p, wire.ProtocolRenew)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(n.cfg.AdmissionTimeout))
	req, _ := proto.Marshal(&protocolpb.RenewRequest{Credential: n.credential().Proto()})
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
	if !c.Subject.Equal(n.self) {
		return nil, fmt.Errorf("issuer %s returned a credential for %s", p, c.Subject)
	}
	if err := n.verifier.VerifyCredential(c, n.now()); err != nil {
		return nil, err
	}
	return c, nil
}

// CredentialStatus says when the credential expires and whether its
// renewal is overdue.
type CredentialStatus struct {
	Expires  time.Time `json:"expires"`
	RenewAt  time.Time `json:"renew_at"`
	TimeLeft string    `json:"time_left"`
	Warning  string    `json:"warning,omitempty"`
}

// credentialStatus reports on the agent's credential.
func (n *Node) credentialStatus() CredentialStatus {
	c := n.credential()
	now := n.now()
	life := c.Expires.Sub(c.NotBefore)
	st := CredentialStatus{Expires: c.Expires.UTC(), RenewAt: c.NotBefore.Add(time.Duration(float64(life) * n.cfg.RenewAfter)).UTC(),
		TimeLeft: c.Expires.Sub(now).Round(time.Second).String()}
	switch {
	case !now.Before(c.Expires):
		st.Warning = "credential expired: this agent is refused by every node until it gets a new one"
	case now.After(c.NotBefore.Add(life/2)) && now.After(st.RenewAt):
		st.Warning = fmt.Sprintf("credential renewal overdue: %s left and no issuer has renewed it", st.TimeLeft)
	}
	return st
}

// maybeRenew starts a renewal once RenewAfter of the credential's lifetime
// has passed, from this node itself when it is an issuer for its anchor, or
// from any connected peer that serves the renewal protocol. It warns from
// half-life on while no renewal succeeds.
func (n *Node) maybeRenew() {
	st := n.credentialStatus()
	if n.now().Before(st.RenewAt) || !n.renewing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer n.renewing.Store(false)
		c, err := n.renew()
		if err != nil {
			if w := n.credentialStatus().Warning; w != "" {
				n.log.Warn("credential renewal failed", "warning", w, "err", err)
			}
			return
		}
		n.credMu.Lock()
		n.cred = c
		n.credMu.Unlock()
		_ = n.announce()
		r := n.record(audit.Out, audit.Renewal, "")
		r.Decision, r.Detail = audit.Accept, "credential renewed until "+c.Expires.UTC().Format(time.RFC3339)
		n.audit.Write(r)
		if n.cfg.OnCredential != nil {
			n.cfg.OnCredential(c)
		}
	}()
}

func (n *Node) renew() (*trust.Credential, error) {
	old := n.credential()
	if n.cfg.Issuer != nil && n.cfg.Issuer.Public().Equal(old.Issuer) {
		return trust.IssueCredential(n.cfg.Issuer, n.self, old.Name, n.now(), old.Expires.Sub(old.NotBefore))
	}
	h := n.host()
	var last error = fmt.Errorf("no issuer reachable")
	for _, p := range h.Network().Peers() {
		if ok, _ := h.Peerstore().SupportsProtocols(p, wire.ProtocolRenew); len(ok) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(n.ctx, n.cfg.AdmissionTimeout)
		c, err := n.renewFrom(ctx, p)
		cancel()
		if err == nil {
			return c, nil
		}
		last = err
	}
	return nil, last
}
