package node

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pubsubpb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshagent/meshagent/node/internal/audit"
	"github.com/meshagent/meshagent/node/internal/subfilter"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

// Message is a verified pubsub message.
type Message struct {
	Topic         string
	From          peer.ID
	Action        string
	Body          []byte
	CorrelationID protocol.CorrelationID
}

// Subscription delivers verified messages of one topic.
type Subscription struct {
	sub  *pubsub.Subscription
	self peer.ID
}

// Next blocks until the next message from another agent, or ctx ends.
func (s *Subscription) Next(ctx context.Context) (*Message, error) {
	for {
		m, err := s.sub.Next(ctx)
		if err != nil {
			return nil, err
		}
		if m.GetFrom() == s.self {
			continue
		}
		e, ok := m.ValidatorData.(*protocol.Envelope)
		if !ok {
			continue
		}
		return &Message{Topic: e.RecipientTopic, From: e.Sender.PeerID(), Action: e.Action, Body: e.Payload, CorrelationID: e.CorrelationID}, nil
	}
}

// Cancel stops the subscription.
func (s *Subscription) Cancel() { s.sub.Cancel() }

// join returns the topic, joining it and registering its validator once.
// A node joins at most subfilter.MaxTopics topics, the registry's two among them, and
// stays in each until it stops.
func (n *Node) join(name string) (*pubsub.Topic, error) {
	if !subfilter.ValidTopic(name) {
		return nil, protocol.Reject(trust.CodeMalformed, "topic %q: a topic is the resource of a publish scope, 1-%d characters of [a-z0-9._-] starting with a letter or digit", name, trust.MaxScopePart)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ps == nil {
		return nil, ErrNotStarted
	}
	if t, ok := n.topics[name]; ok {
		return t, nil
	}
	if len(n.topics) >= subfilter.MaxTopics {
		return nil, protocol.Reject(trust.CodeFull, "topic %q: this node already joined %d topics, the most it keeps until it stops", name, subfilter.MaxTopics)
	}
	if err := n.ps.RegisterTopicValidator(name, n.validator(name), pubsub.WithValidatorInline(true)); err != nil {
		return nil, fmt.Errorf("node: validator for %q: %w", name, err)
	}
	t, err := n.ps.Join(name)
	if err != nil {
		return nil, fmt.Errorf("node: join %q: %w", name, err)
	}
	_ = t.SetScoreParams(topicScoreParams())
	n.topics[name] = t
	return t, nil
}

// validator runs the decision function on every message of the topic, and
// requires the pubsub author (whose signature pubsub has checked) to be the
// envelope's sender. A message broken or forged in itself is rejected,
// which lowers the forwarder's score and spends its budget: an honest
// forwarder would have refused it. A message refused for what rests on
// this node's own anchors, clock, revocations or state is ignored: the
// forwarder, which accepted it, is not to blame.
func (n *Node) validator(topic string) pubsub.ValidatorEx {
	return func(_ context.Context, _ peer.ID, m *pubsub.Message) pubsub.ValidationResult {
		start := time.Now()
		// An author whose own messages this node kept refusing uncharged
		// (see below): past its budget, the rest of what it delivered
		// before inspectRPC cut it off is dropped here, unchecked.
		if m.ReceivedFrom == m.GetFrom() && m.ReceivedFrom != n.ID() && n.live.ownRefused.Spent(string(m.ReceivedFrom)) {
			n.gate.CountThrottle()
			return pubsub.ValidationIgnore
		}
		author, err := trust.PublicKeyFromPeerID(m.GetFrom())
		var e *protocol.Envelope
		if err == nil {
			e, err = n.decider.Decide(m.Data, protocol.Expect{Kinds: []protocol.Kind{protocol.KindMessage}, Topic: topic, From: author}, n.now())
		}
		if author.Equal(n.self) && err == nil {
			m.ValidatorData = e
			return pubsub.ValidationAccept
		}
		rec := n.record(audit.In, audit.Message, m.GetFrom().String())
		rec.Recipient = topic
		if e != nil {
			rec.CorrelationID, rec.Action = e.CorrelationID.String(), e.Action
		}
		rec.LatencyMS = float64(time.Since(start).Microseconds()) / 1000
		if err != nil {
			code := codeOrDefault(err, trust.CodeMalformed)
			reject(&rec, code, err.Error())
			n.audit.Write(rec)
			if forwarderFault[code] {
				n.gate.Penalize(m.ReceivedFrom, code)
				return pubsub.ValidationReject
			}
			// Not the forwarder's fault. A message its author delivered
			// itself (pubsub verified its signature) is charged to it when
			// the author could have known better whatever this node's
			// state: a topic its action does not name (older relays do
			// not check that, so it is no forwarder's fault).
			if m.ReceivedFrom == m.GetFrom() {
				if authorFault[code] {
					n.gate.Penalize(m.ReceivedFrom, code)
				} else {
					// Refused for this node's clock, registry or replay
					// guard (stale, dead, replay...): not charged, but an
					// author that keeps delivering such messages of its own
					// has the next ones dropped unchecked (inspectRPC),
					// and only those: what it relays still passes.
					n.live.ownRefused.Allow(string(m.ReceivedFrom))
				}
			}
			return pubsub.ValidationIgnore
		}
		rec.Decision = audit.Accept
		n.audit.Write(rec)
		m.ValidatorData = e
		return pubsub.ValidationAccept
	}
}

// A peer's pubsub subscription changes: subscriptionBurst at once (an
// honest node's first RPC on a connection announces its topics, at most
// 256), then subscriptionRate a second; past that it is cut off
// (inspectRPC).
const (
	subscriptionBurst = 1024
	subscriptionRate  = 32
)

var errSubscriptionFlood = errors.New("node: subscription changes past the rate")

// authorFault are the refusals charged to an author that delivered the
// message itself, besides forwarderFault.
var authorFault = map[trust.Code]bool{protocol.CodeTopicNotGranted: true}

// messageID names a pubsub message by its author and the hash of its data,
// not by the author's pubsub sequence number: one envelope wrapped in two
// pubsub messages is one message to gossipsub, so that two honest nodes
// that each got a copy never refuse each other's forward as a replay. The
// author is part of the ID because the verdict depends on it (a record or
// an envelope must be its author's): a copy re-wrapped by someone else is
// another message, and its rejection never marks the original invalid.
func messageID(m *pubsubpb.Message) string {
	d := sha256.Sum256(m.Data)
	return string(m.From) + string(d[:])
}

// subscriptionBytes bounds what one subscription holds for a reader that
// falls behind (pubsub drops what does not fit, for that subscription
// only): each message held is its data and its decoded envelope, so 64
// messages at the default 256 KiB limit, up to 1 024 smaller ones.
const subscriptionBytes = 32 << 20

func subscriptionBuffer(maxMessage int) int {
	return min(max(subscriptionBytes/(2*max(maxMessage, 1)), 16), 1024)
}

// Subscribe joins topic and returns its verified messages.
func (n *Node) Subscribe(topic string) (*Subscription, error) {
	t, err := n.join(topic)
	if err != nil {
		return nil, err
	}
	s, err := t.Subscribe(pubsub.WithBufferSize(subscriptionBuffer(n.cfg.MaxEnvelopeSize)))
	if err != nil {
		return nil, err
	}
	return &Subscription{sub: s, self: n.ID()}, nil
}

// Publish signs an envelope for topic with the token that grants action
// and publishes it. action must be protocol.TopicAction(topic),
// publish:TOPIC: a token publishes only on the topics its scopes name.
func (n *Node) Publish(ctx context.Context, topic, action string, body []byte) error {
	if want := protocol.TopicAction(topic); action != want {
		return protocol.Reject(protocol.CodeTopicNotGranted, "a message on topic %q needs the action %q, not %q", topic, want, action)
	}
	raw, err := n.sealMessage(topic, action, body, nil)
	if err != nil {
		return err
	}
	return n.publishSealed(ctx, topic, raw)
}

// sealMessage builds and signs a pubsub envelope.
func (n *Node) sealMessage(topic, action string, body []byte, tok *trust.Token) ([]byte, error) {
	if tok == nil {
		tok = n.tokenFor(action)
	}
	return protocol.Seal(n.cfg.Identity, &protocol.Envelope{Kind: protocol.KindMessage, RecipientTopic: topic, Action: action, Payload: body, Token: tok}, n.now())
}

// publishSealed publishes sealed bytes on topic, audited.
func (n *Node) publishSealed(ctx context.Context, topic string, raw []byte) error {
	t, err := n.join(topic)
	if err != nil {
		return err
	}
	rec := n.record(audit.Out, audit.Message, topic)
	rec.Decision = audit.Accept
	if err := t.Publish(ctx, raw); err != nil {
		reject(&rec, codeOrDefault(err, trust.CodeMalformed), err.Error())
		n.audit.Write(rec)
		return err
	}
	n.audit.Write(rec)
	return nil
}
