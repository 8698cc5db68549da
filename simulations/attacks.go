package simulations

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-msgio"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

// Attack is one row of the threat model played as a sustained flood: the
// attacker repeats it from 4 goroutines for as long as the measurement
// lasts, and the target must reject every attempt with Code.
type Attack struct {
	Name string
	Code trust.Code // "" for the mixed flood, whose attempts have several
	What string
}

// Attacks is every row of the threat model that one attacker can play
// against one target on its own. (A dead agent speaking is played by
// TestThreatModelInAMeshOfTwenty: it needs the mesh to declare the
// attacker dead first.)
var Attacks = []Attack{
	{"forgery", trust.CodeBadSignature, "a request whose signature does not verify"},
	{"tampering", trust.CodeBadSignature, "a signed request with its body altered"},
	{"impersonation", protocol.CodeImpersonation, "an honest agent's request sent by the attacker"},
	{"replay", protocol.CodeReplay, "the attacker's own accepted request, sent again"},
	{"misdirected", protocol.CodeWrongRecipient, "an honest request to another node, sent to the target"},
	{"escalation", trust.CodeEscalation, "a chain that grants read:logs from a read:metrics token"},
	{"widened", trust.CodeEscalation, "a delegation outliving its parent"},
	{"wildcard", trust.CodeWildcard, "a delegation with a wildcard scope"},
	{"stolen-token", trust.CodeNotHolder, "an honest agent's token used by the attacker"},
	{"expired", trust.CodeExpired, "an expired token"},
	{"not-yet-valid", trust.CodeNotYetValid, "a token valid from tomorrow"},
	{"revoked", trust.CodeRevoked, "a revoked token"},
	{"untrusted-root", trust.CodeUntrustedRoot, "a token from an anchor the mesh does not trust"},
	{"stale", protocol.CodeStale, "a request sealed 6 minutes ago"},
	{"garbage", trust.CodeMalformed, "frames that are not envelopes"},
	{"oversized", trust.CodeTooLarge, "frames above the size limit"},
	{"outsider", trust.CodeUntrustedRoot, "connections from an agent whose credential the mesh's anchor did not issue"},
	{"mixed", "", "forged, re-sent, stolen-token, escalated and garbage requests in turn"},
}

// AttackNamed returns the attack called name.
func AttackNamed(name string) (Attack, bool) {
	for _, a := range Attacks {
		if a.Name == name {
			return a, true
		}
	}
	return Attack{}, false
}

// kit is what an attacker holds: its node and key, the target, and the
// material the scenario gave it.
type kit struct {
	n    *node.Node
	id   *trust.Identity
	tid  peer.ID
	addr peer.AddrInfo // the target's address, for the outsider's redials
	skew *atomic.Int64 // the offset of n's clock (its Config.Clock must read it: "stale" needs it)

	own, stolen, delegated, expired, notYet, revoked *trust.Token
	replayed, misdirected                            []byte

	// For the resource attacks (resource.go): the attacker's credential,
	// for the insider host they admit by hand; whether the attack is on
	// and when it ends (run sets both), for what they hold to be let go;
	// and the attempts that got past the attacker's own dial, open or
	// write.
	cred   *trust.Credential
	on     *atomic.Bool
	stop   <-chan struct{}
	landed atomic.Int64
}

// seal builds a request to the target with tok, failing loudly: a scenario
// whose attack cannot be built must not report a clean run.
func (k *kit) seal(action string, body []byte, tok *trust.Token) ([]byte, error) {
	raw, err := k.n.SealRequest(k.tid, action, body, tok)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	return raw, nil
}

// attempt returns the function that makes one attempt of attack a. Frames
// are built once and re-sent: every one is rejected before its nonce is
// recorded, so the same bytes cost the target the same checks each time,
// and the attacker spends its CPU on sending, not on signing.
func (k *kit) attempt(ctx context.Context, a string) (func(), error) {
	send := func(raw []byte) func() { return func() { _, _ = k.n.SendRaw(ctx, k.tid, raw) } }
	sealWith := func(tok *trust.Token) (func(), error) {
		if tok == nil {
			return nil, fmt.Errorf("%s: no token given", a)
		}
		raw, err := k.seal("read:logs", nil, tok)
		if err != nil {
			return nil, err
		}
		return send(raw), nil
	}
	now := time.Now()
	switch a {
	case "forgery":
		raw, err := k.seal("read:logs", nil, k.stolen)
		if err != nil {
			return nil, err
		}
		raw[len(raw)-1] ^= 1
		return send(raw), nil
	case "tampering":
		raw, err := k.seal("read:logs", []byte("aaaa"), k.own)
		if err != nil {
			return nil, err
		}
		raw[strings.Index(string(raw), "aaaa")] = 'b'
		return send(raw), nil
	case "impersonation":
		return send(k.replayed), nil
	case "replay":
		raw, err := k.seal("read:metrics", nil, k.own)
		if err != nil {
			return nil, err
		}
		if _, err := k.n.SendRaw(ctx, k.tid, raw); trust.CodeOf(err) != protocol.CodeNoHandler {
			return nil, fmt.Errorf("replay: the first send was not accepted: %v", err)
		}
		return send(raw), nil
	case "misdirected":
		return send(k.misdirected), nil
	case "escalation":
		return sealWith(k.own.ForgeDelegation(k.id, k.id.Public(), trust.Grant{Scopes: []string{"read:logs"}, Expires: now.Add(time.Hour)}, now))
	case "widened":
		if k.delegated == nil {
			return nil, fmt.Errorf("widened: no delegation given")
		}
		return sealWith(k.delegated.ForgeDelegation(k.id, k.id.Public(), trust.Grant{Scopes: []string{"read:logs"}, Expires: now.Add(48 * time.Hour)}, now))
	case "wildcard":
		if k.delegated == nil {
			return nil, fmt.Errorf("wildcard: no delegation given")
		}
		return sealWith(k.delegated.ForgeDelegation(k.id, k.id.Public(), trust.Grant{Scopes: []string{"read:*"}, Expires: now.Add(time.Hour)}, now))
	case "stolen-token":
		return sealWith(k.stolen)
	case "expired":
		return sealWith(k.expired)
	case "not-yet-valid":
		return sealWith(k.notYet)
	case "revoked":
		return sealWith(k.revoked)
	case "untrusted-root":
		rogue, err := trust.GenerateAnchorKey(nil)
		if err != nil {
			return nil, err
		}
		tok, err := trust.IssueToken(rogue, k.id.Public(), trust.Grant{Scopes: []string{"read:logs"}, Expires: now.Add(time.Hour)}, now)
		if err != nil {
			return nil, err
		}
		return sealWith(tok)
	case "stale":
		k.skew.Store(int64(-6 * time.Minute))
		raw, err := k.seal("read:logs", nil, k.own)
		k.skew.Store(0)
		if err != nil {
			return nil, err
		}
		return send(raw), nil
	case "garbage", "oversized":
		frame := []byte("garbage")
		if a == "oversized" {
			frame = make([]byte, protocol.DefaultMaxEnvelopeSize+1)
		}
		return func() {
			if s, err := k.n.Host().NewStream(ctx, k.tid, protocol.ProtocolRPC); err == nil {
				_ = msgio.NewVarintWriter(s).WriteMsg(frame)
				_ = s.Reset()
			}
		}, nil
	case "outsider":
		return func() {
			h := k.n.Host()
			_ = h.Network().ClosePeer(k.tid)
			_ = k.n.Join(network.WithForceDirectDial(ctx, "outsider"), k.addr)
		}, nil
	case "mixed":
		var steps []func()
		for _, b := range []string{"forgery", "impersonation", "stolen-token", "escalation", "garbage"} {
			f, err := k.attempt(ctx, b)
			if err != nil {
				return nil, err
			}
			steps = append(steps, f)
		}
		var i atomic.Uint64
		return func() { steps[i.Add(1)%uint64(len(steps))]() }, nil
	}
	return k.resourceAttempt(ctx, a)
}

// run makes attempts of attack a from 4 goroutines while on is set, until
// stop closes, counting them.
func (k *kit) run(ctx context.Context, a string, on *atomic.Bool, stop <-chan struct{}, attempts *atomic.Int64) error {
	k.on, k.stop = on, stop
	f, err := k.attempt(ctx, a)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if !on.Load() {
					time.Sleep(time.Millisecond) // paused
					continue
				}
				attempts.Add(1)
				f()
			}
		}()
	}
	wg.Wait()
	return nil
}
