package protocol

import (
	"fmt"
	"time"

	"github.com/meshagent/meshagent/trust"
)

// Expect is what an entry point expects of an envelope.
type Expect struct {
	// Kinds are the kinds accepted here (e.g. KindRequest on an RPC server).
	Kinds []Kind
	// Peer, when set, is the only accepted recipient peer (this node).
	Peer trust.PublicKey
	// Topic, when set, is the only accepted recipient topic.
	Topic string
	// From, when set, is the only accepted sender: the TLS-authenticated
	// remote peer of an RPC stream, or the signed author of a pubsub message.
	From trust.PublicKey
}

// Membership answers "is this sender listed and alive?" (Admit) and "may
// this agent appear as a holder in a chain?" (AdmitHolder: a dead agent may
// not). Both return nil or a *trust.Error (CodeUnlisted, CodeDead, ...).
// They must be fast and safe for concurrent use: Admit runs on every
// envelope before the signature check.
type Membership interface {
	Admit(sender trust.PublicKey, now time.Time) error
	AdmitHolder(holder trust.PublicKey, now time.Time) error
}

// Decider is the one decision function: may this envelope be acted on?
// It is safe for concurrent use.
type Decider struct {
	Verifier   *trust.Verifier
	Replay     *ReplayGuard
	Membership Membership // nil: no membership check
	MaxSize    int        // bytes; default DefaultMaxEnvelopeSize
}

// Decide decodes raw and runs every check, cheapest first: size, decoding,
// version, kind, recipient, timestamp window, sender (expected peer, then
// membership), nonce not yet seen, signature, capability chain (rooted,
// signed, narrowing, valid now, unrevoked), holder is sender, action within
// the leaf's scopes, no holder in the chain dead. A chain whose exact bytes
// the verifier accepted before skips its decode, rule and signature checks
// (trust.Verifier.DecodeToken). Only when all pass is the nonce recorded, so forged
// envelopes cannot fill the replay cache. The envelope is returned even on
// rejection when it decoded, so that the caller can audit what was refused.
func (d *Decider) Decide(raw []byte, x Expect, now time.Time) (*Envelope, error) {
	max := d.MaxSize
	if max <= 0 {
		max = DefaultMaxEnvelopeSize
	}
	e, err := open(raw, max, d.Verifier.DecodeToken)
	if err != nil {
		return nil, err
	}
	return e, d.check(e, x, now)
}

func (d *Decider) check(e *Envelope, x Expect, now time.Time) error {
	if !kindIn(e.Kind, x.Kinds) {
		return Reject(CodeWrongKind, "a %s is not accepted here", e.Kind)
	}
	if !x.Peer.IsZero() && !e.RecipientPeer.Equal(x.Peer) {
		return Reject(CodeWrongRecipient, "addressed to %s, not to this node", describeRecipient(e))
	}
	if x.Topic != "" && e.RecipientTopic != x.Topic {
		return Reject(CodeWrongRecipient, "addressed to %s, not to topic %q", describeRecipient(e), x.Topic)
	}
	if e.Kind == KindMessage && e.Action != TopicAction(e.RecipientTopic) {
		return Reject(CodeTopicNotGranted, "a message on topic %q needs the action %q, not %q", e.RecipientTopic, TopicAction(e.RecipientTopic), e.Action)
	}
	if err := d.Replay.CheckTime(e.Timestamp, now); err != nil {
		return err
	}
	if !x.From.IsZero() && !e.Sender.Equal(x.From) {
		return Reject(CodeImpersonation, "envelope claims sender %s but came from %s", e.Sender, x.From)
	}
	if d.Membership != nil {
		if err := d.Membership.Admit(e.Sender, now); err != nil {
			return err
		}
	}
	if d.Replay.Seen(e.Sender, e.Nonce) {
		return Reject(CodeReplay, "nonce already seen from %s", e.Sender)
	}
	if !e.VerifySignature() {
		return Reject(trust.CodeBadSignature, "envelope signature does not verify")
	}
	if e.Kind.needsToken() {
		if e.Token == nil {
			return Reject(CodeNoToken, "a %s needs a capability token for %q", e.Kind, e.Action)
		}
		if err := d.Verifier.Authorize(e.Token, e.Sender, e.Action, now); err != nil {
			return err
		}
		if d.Membership != nil {
			for i, l := range e.Token.Links {
				if err := d.Membership.AdmitHolder(l.Holder, now); err != nil {
					if te, ok := err.(*trust.Error); ok {
						te.Link = i
					}
					return err
				}
			}
		}
	}
	return d.Replay.Record(e.Sender, e.Nonce, e.Timestamp, now)
}

// TopicAction is the action a message on topic must carry, and so the
// scope a token needs to publish there: publish:TOPIC. Topics are named
// like the resource part of a scope (1–31 characters of [a-z0-9._-]).
func TopicAction(topic string) string { return "publish:" + topic }

func kindIn(k Kind, ks []Kind) bool {
	for _, x := range ks {
		if x == k {
			return true
		}
	}
	return false
}

func describeRecipient(e *Envelope) string {
	if e.RecipientTopic != "" {
		return fmt.Sprintf("topic %q", e.RecipientTopic)
	}
	return e.RecipientPeer.String()
}
