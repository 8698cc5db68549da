//go:build meshsim

package node_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-msgio"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

var logsSchema = json.RawMessage(`{"type":"object","properties":{"since":{"type":"string"}}}`)

// actionsOf returns the action names from's Peers lists for agent.
func actionsOf(m *simulations.Mesh, from, agent string) []string {
	for _, e := range m.Agents[from].Node.Peers() {
		if e.PeerID == m.Agents[agent].ID() {
			return e.Actions
		}
	}
	return nil
}

func waitActions(t *testing.T, m *simulations.Mesh, from, agent string, want ...string) {
	t.Helper()
	if err := simulations.WaitFor(10*time.Second, func() error {
		if got := actionsOf(m, from, agent); !slices.Equal(got, want) {
			return fmt.Errorf("%s lists %s's actions %v, want %v", from, agent, got, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func fetchAdvert(m *simulations.Mesh, from, agent string) (*node.Advertisement, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return m.Agents[from].Node.Advertisement(ctx, m.Agents[agent].ID())
}

// An agent's advertised names reach every peer in its signed record; the
// full advertisement is fetched from it, verified and cached by digest; a
// change re-announces the record and a fetch then gets the new one.
func TestAdvertisementsAcrossTheMesh(t *testing.T) {
	m, _ := convergedMesh(t)
	w := m.Agents["worker"].Node
	if err := w.Advertise(node.Action{Scope: "read:logs", Description: "Returns the logs since a time.", InputSchema: logsSchema}); err != nil {
		t.Fatal(err)
	}
	waitActions(t, m, "orchestrator", "worker", "read:logs")
	waitActions(t, m, "mallory", "worker", "read:logs")
	ad, err := fetchAdvert(m, "orchestrator", "worker")
	if err != nil {
		t.Fatal(err)
	}
	if len(ad.Actions) != 1 || ad.Actions[0].Description != "Returns the logs since a time." || !bytes.Equal(ad.Actions[0].InputSchema, logsSchema) {
		t.Fatalf("advertisement %+v", ad.Actions)
	}
	if n, size := node.AdvertCache(m.Agents["orchestrator"].Node); n != 1 || size != ad.Size {
		t.Fatalf("cache holds %d (%d bytes), want 1 (%d)", n, size, ad.Size)
	}
	// A second fetch is served from the cache: the worker would refuse
	// past its serving limit, and does not see the stream at all.
	for range 10 {
		if _, err := fetchAdvert(m, "orchestrator", "worker"); err != nil {
			t.Fatalf("cached fetch: %v", err)
		}
	}
	if err := w.Advertise(node.Action{Scope: "write:reports", Description: "Files a report."}); err != nil {
		t.Fatal(err)
	}
	waitActions(t, m, "orchestrator", "worker", "read:logs", "write:reports")
	ad, err = fetchAdvert(m, "orchestrator", "worker")
	if err != nil || len(ad.Actions) != 2 || ad.Actions[1].Scope != "write:reports" {
		t.Fatalf("after the change: %+v, %v", ad, err)
	}
	if err := w.Unadvertise("read:logs"); err != nil {
		t.Fatal(err)
	}
	waitActions(t, m, "orchestrator", "worker", "write:reports")
	// An agent that advertises nothing has an empty advertisement, with no
	// stream opened.
	if ad, err := fetchAdvert(m, "worker", "mallory"); err != nil || len(ad.Actions) != 0 {
		t.Fatalf("mallory's advertisement: %+v, %v", ad, err)
	}
}

// An insider cannot advertise more than MaxActions actions, a schema past
// MaxSchema (10 MB, say), or a description of several lines: each is
// refused in one line and the record and advertisement stay as they were.
func TestAdvertiseBounds(t *testing.T) {
	m, _ := convergedMesh(t)
	w := m.Agents["worker"].Node
	if err := w.Advertise(node.Action{Scope: "read:logs"}); err != nil {
		t.Fatal(err)
	}
	for i := range discovery.MaxActions - 1 {
		if err := w.Advertise(node.Action{Scope: fmt.Sprintf("do:thing%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	huge := json.RawMessage(`{"x":"` + strings.Repeat("a", 10<<20) + `"}`)
	for name, a := range map[string]node.Action{
		"one action too many": {Scope: "do:one-too-many"},
		"10 MB of schema":     {Scope: "read:logs", InputSchema: huge},
		"two lines":           {Scope: "read:logs", Description: "one\ntwo"},
		"not a schema":        {Scope: "read:logs", InputSchema: json.RawMessage(`[1]`)},
		"a wildcard":          {Scope: "read:*"},
	} {
		err := w.Advertise(a)
		if err == nil || strings.Contains(err.Error(), "\n") {
			t.Fatalf("%s: %v", name, err)
		}
	}
	rec, err := node.CurrentRecord(w)
	if err != nil {
		t.Fatal(err)
	}
	if got := rec.Actions(); len(got) != discovery.MaxActions || slices.Contains(got, "do:one-too-many") {
		t.Fatalf("record names %d actions", len(got))
	}
	if p := proto.Size(rec.Proto()); p > discovery.MaxRecordSize {
		t.Fatalf("record of %d bytes", p)
	}
	waitActions(t, m, "orchestrator", "worker", rec.Actions()...)
	ad, err := fetchAdvert(m, "orchestrator", "worker")
	if err != nil || len(ad.Actions) != discovery.MaxActions {
		t.Fatalf("%v", err)
	}
}

// forgedRecord re-encodes rec's body through edit and keeps its signature.
func forgedRecord(t *testing.T, rec *discovery.Record, edit func(*protocolpb.AnnouncementBody)) *protocolpb.Announcement {
	t.Helper()
	var b protocolpb.AnnouncementBody
	a := rec.Proto()
	if err := proto.Unmarshal(a.Body, &b); err != nil {
		t.Fatal(err)
	}
	edit(&b)
	body, err := proto.Marshal(&b)
	if err != nil {
		t.Fatal(err)
	}
	return &protocolpb.Announcement{Body: body, Signature: a.Signature}
}

// A relay cannot alter the names in an agent's record (the record's
// signature covers them), and an insider's own record naming 10 000
// actions is refused whole: the receiver keeps the record it had.
func TestRecordActionsCannotBeAlteredOrInflated(t *testing.T) {
	m, _ := convergedMesh(t)
	w := m.Agents["worker"].Node
	if err := w.Advertise(node.Action{Scope: "read:logs"}); err != nil {
		t.Fatal(err)
	}
	waitActions(t, m, "orchestrator", "worker", "read:logs")
	rec, err := node.CurrentRecord(w)
	if err != nil {
		t.Fatal(err)
	}
	altered := forgedRecord(t, rec, func(b *protocolpb.AnnouncementBody) {
		b.Actions = []string{"admin:everything"}
		b.Seq += 1000
	})
	// The insider's own record, signed by it, with 10 000 names.
	mal := m.Agents["mallory"]
	var names []string
	for i := range 10000 {
		names = append(names, fmt.Sprintf("do:thing%05d", i))
	}
	inflated, err := discovery.NewRecordAdvertising(mal.Identity, mal.Credential, nil, uint64(time.Now().UnixNano())<<1, time.Second, time.Now(), names, [32]byte{1})
	if err == nil {
		t.Fatal("a record with 10 000 actions was signed")
	}
	body, err := proto.Marshal(&protocolpb.AnnouncementBody{Version: 1, Agent: func() []byte { k := mal.Identity.Public(); return k[:] }(), Credential: mal.Credential.Proto(),
		Seq: uint64(time.Now().UnixNano()) << 1, HeartbeatIntervalMs: 250, Timestamp: time.Now().UnixNano(), Actions: names, AdvertDigest: make([]byte, 32)})
	if err != nil {
		t.Fatal(err)
	}
	big := &protocolpb.Announcement{Body: body, Signature: mal.Identity.Sign(wire.DomainAnnounce, body)}
	_ = inflated
	_, bw := beatStream(t, m, "mallory", "orchestrator")
	for _, a := range []*protocolpb.Announcement{altered, big} {
		raw, err := proto.Marshal(&protocolpb.BeatBatch{Records: []*protocolpb.Announcement{a}})
		if err != nil {
			t.Fatal(err)
		}
		_ = bw.WriteMsg(raw) // the link may be dropped after the first
	}
	time.Sleep(time.Second) // four heartbeats
	if got := actionsOf(m, "orchestrator", "worker"); !slices.Equal(got, []string{"read:logs"}) {
		t.Fatalf("orchestrator lists the worker's actions as %v", got)
	}
	if got := actionsOf(m, "orchestrator", "mallory"); len(got) != 0 {
		t.Fatalf("orchestrator lists %d actions of mallory", len(got))
	}
	if _, err := discovery.ParseRecord(altered); trust.CodeOf(err) != trust.CodeBadSignature {
		t.Fatalf("altered record: %v", err)
	}
	if _, err := discovery.ParseRecord(big); trust.CodeOf(err) != trust.CodeTooLarge {
		t.Fatalf("inflated record: %v", err)
	}
}

// serveInstead makes the agent's host answer advertisement fetches with
// raw, as an insider that serves something else than its record's digest.
func serveInstead(m *simulations.Mesh, agent string, raw func() []byte, served *int) {
	m.Agents[agent].Node.Host().SetStreamHandler(wire.ProtocolAdvert, func(s network.Stream) {
		defer s.Close()
		*served++
		_ = msgio.NewVarintWriter(s).WriteMsg(raw())
	})
}

// A peer that serves an advertisement other than its record's digest
// (another content it signed itself, another agent's advertisement, a
// forged signature, 10 MB) is refused, and nothing is cached.
func TestServedAdvertMustMatchTheRecord(t *testing.T) {
	m, _ := convergedMesh(t)
	mal := m.Agents["mallory"]
	if err := mal.Node.Advertise(node.Action{Scope: "read:logs", Description: "honest"}); err != nil {
		t.Fatal(err)
	}
	if err := m.Agents["worker"].Node.Advertise(node.Action{Scope: "read:logs", Description: "the worker's"}); err != nil {
		t.Fatal(err)
	}
	waitActions(t, m, "orchestrator", "mallory", "read:logs")
	waitActions(t, m, "orchestrator", "worker", "read:logs")
	marshal := func(ad *protocolpb.Advert) []byte { b, _ := proto.Marshal(ad); return b }
	other, _, _, err := discovery.SignAdvert(mal.Identity, []discovery.Action{{Scope: "read:logs", Description: "something else"}})
	if err != nil {
		t.Fatal(err)
	}
	workers, _, _, err := discovery.SignAdvert(m.Agents["worker"].Identity, []discovery.Action{{Scope: "read:logs", Description: "the worker's"}})
	if err != nil {
		t.Fatal(err)
	}
	honest, _, _, err := discovery.SignAdvert(mal.Identity, []discovery.Action{{Scope: "read:logs", Description: "honest"}})
	if err != nil {
		t.Fatal(err)
	}
	badSig := &protocolpb.Advert{Body: honest.Body, Signature: bytes.Repeat([]byte{7}, 64)}
	served := 0
	for name, raw := range map[string][]byte{
		"another content":        marshal(other),
		"another agent's":        marshal(workers),
		"a forged signature":     marshal(badSig),
		"10 MB":                  bytes.Repeat([]byte{1}, 10<<20),
		"garbage of a good size": []byte("not protobuf at all, not at all"),
	} {
		serveInstead(m, "mallory", func() []byte { return raw }, &served)
		before := served
		if _, err := fetchAdvert(m, "orchestrator", "mallory"); err == nil {
			t.Fatalf("%s: accepted", name)
		}
		if served != before+1 {
			t.Fatalf("%s: served %d times", name, served-before)
		}
		if n, _ := node.AdvertCache(m.Agents["orchestrator"].Node); n != 0 {
			t.Fatalf("%s: %d cached", name, n)
		}
	}
	// The honest one passes, and is then cached.
	serveInstead(m, "mallory", func() []byte { return marshal(honest) }, &served)
	if ad, err := fetchAdvert(m, "orchestrator", "mallory"); err != nil || ad.Actions[0].Description != "honest" {
		t.Fatalf("honest: %+v, %v", ad, err)
	}
	if n, _ := node.AdvertCache(m.Agents["orchestrator"].Node); n != 1 {
		t.Fatalf("%d cached", n)
	}
}

// An outsider that completed TLS but not admission gets nothing on the
// advertisement protocol; an admitted peer gets the advertisement at most
// serveBurst times at once, then one a heartbeat.
func TestAdvertServedOnlyToAdmittedAndBounded(t *testing.T) {
	m, _ := convergedMesh(t)
	w := m.Agents["worker"]
	if err := w.Node.Advertise(node.Action{Scope: "read:logs", Description: "logs"}); err != nil {
		t.Fatal(err)
	}
	waitActions(t, m, "mallory", "worker", "read:logs")
	fetchRaw := func(open func(ctx context.Context) (network.Stream, error)) int {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s, err := open(ctx)
		if err != nil {
			return 0
		}
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(2 * time.Second))
		b, _ := io.ReadAll(s)
		return len(b)
	}
	out := outsiderHost(t)
	if err := out.Connect(context.Background(), peer.AddrInfo{ID: w.ID(), Addrs: w.Node.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	if n := fetchRaw(func(ctx context.Context) (network.Stream, error) {
		return out.NewStream(ctx, w.ID(), wire.ProtocolAdvert)
	}); n != 0 {
		t.Fatalf("outsider read %d bytes", n)
	}
	mal := m.Agents["mallory"].Node.Host()
	got := 0
	for range 10 {
		if fetchRaw(func(ctx context.Context) (network.Stream, error) {
			return mal.NewStream(ctx, w.ID(), wire.ProtocolAdvert)
		}) > 0 {
			got++
		}
	}
	t.Logf("served %d of 10 at once", got)
	if got < 4 || got > 5 { // serveBurst, and maybe one refilled
		t.Fatalf("served %d of 10 at once", got)
	}
}

// Many changes at once go out as at most liveness.ChangeBurst records,
// then one every two heartbeats, the later changes folded in: the peers end
// with every name, and none of them refused a record of the worker as a
// flood (records.RecordBurst at once, then one a heartbeat).
func TestAdvertChangesStayWithinTheRecordRate(t *testing.T) {
	m, _ := convergedMesh(t)
	w := m.Agents["worker"].Node
	var want []string
	for i := range 20 {
		scope := fmt.Sprintf("do:thing%02d", i)
		want = append(want, scope)
		if err := w.Advertise(node.Action{Scope: scope}); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	waitActions(t, m, "orchestrator", "worker", want...)
	waitActions(t, m, "mallory", "worker", want...)
	t.Logf("all 20 names everywhere after %s", time.Since(start))
	for _, a := range m.Audit() {
		if a.Sender == m.Agents["worker"].ID().String() && a.Decision == "reject" && a.Reason == "flood" {
			t.Fatalf("a record of the worker was refused: %+v", a)
		}
	}
}

// An agent advertising as many actions as a record carries, with the
// longest scopes, still passes admission: its hello carries that record
// (until the hello's bound counted the credential only, so such an agent
// could join no one).
func TestFullRecordPassesAdmission(t *testing.T) {
	m, _ := convergedMesh(t)
	w := m.Agents["worker"].Node
	var want []string
	for i := range discovery.MaxActions {
		verb := fmt.Sprintf("v%02d", i) + strings.Repeat("v", 28)
		scope := verb + ":" + strings.Repeat("r", 31)
		if err := w.Advertise(node.Action{Scope: scope}); err != nil {
			t.Fatal(err)
		}
		want = append(want, scope)
	}
	slices.Sort(want)
	waitActions(t, m, "orchestrator", "worker", want...)
	ctx := context.Background()
	if _, err := m.Add(ctx, "newcomer", true, simulations.Options{}); err != nil {
		t.Fatal(err)
	}
	if err := m.Connect(ctx, "newcomer", "worker"); err != nil {
		t.Fatalf("admission between a newcomer and an agent with a full record: %v", err)
	}
	waitActions(t, m, "newcomer", "worker", want...)
}
