package liveness

import (
	"crypto/rand"
	"sync"
	"testing"
	"time"

	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
)

// An advertisement set before the first record goes out with it: the
// change it made is announced once, by that record, not again at the next
// beat. A later change is announced by a record of its own.
func TestAdvertChangeAnnouncedOnce(t *testing.T) {
	anchor, _ := trust.GenerateAnchorKey(rand.Reader)
	id, _ := trust.GenerateIdentity(rand.Reader)
	now := time.Now()
	cred, err := trust.IssueCredential(anchor, id.Public(), "a", now.Add(-time.Minute), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := trust.NewVerifier(trust.DefaultPolicy(anchor.Public()))
	var mu sync.Mutex
	digest := [32]byte{1}
	var published [][32]byte
	s := New(Deps{
		Identity:          id,
		Credential:        func() *trust.Credential { return cred },
		Addrs:             func() []ma.Multiaddr { return nil },
		Registry:          discovery.NewRegistry(discovery.Config{Verifier: v, Self: id.Public()}),
		Clock:             time.Now,
		HeartbeatInterval: time.Hour,
		TopicPeers:        func() int { return 1 },
		Advertised: func() ([]string, [32]byte) {
			mu.Lock()
			defer mu.Unlock()
			return []string{"read:logs"}, digest
		},
		Publish: func(m *protocolpb.RegistryMessage) error {
			b, _ := proto.Marshal(m.GetAnnounce())
			var a protocolpb.Announcement
			_ = proto.Unmarshal(b, &a)
			rec, err := discovery.ParseRecord(&a)
			if err != nil {
				t.Fatal(err)
			}
			d, _ := rec.AdvertDigest()
			published = append(published, d)
			return nil
		},
	})
	s.changed.Store(true)                // Advertise before start: AdvertChanged without its timer
	if err := s.Announce(); err != nil { // the first record, once a peer is on the topic
		t.Fatal(err)
	}
	if s.announceChange() {
		t.Fatal("the change the first record carried was announced again")
	}
	mu.Lock()
	digest = [32]byte{2}
	mu.Unlock()
	s.changed.Store(true)
	if !s.announceChange() {
		t.Fatal("a later change was not announced")
	}
	if len(published) != 2 || published[0] != [32]byte{1} || published[1] != [32]byte{2} {
		t.Fatalf("records published with digests %x", published)
	}
}
