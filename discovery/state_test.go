package discovery

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshagent/meshagent/trust"
)

// A State encodes to its name, as Entry.State holds it today, and back.
func TestStateText(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		s    State
		name string
	}{{0, ""}, {Alive, "alive"}, {Suspect, "suspect"}, {Dead, "dead"}} {
		b, err := c.s.MarshalText()
		if err != nil || string(b) != c.name {
			t.Errorf("State(%d).MarshalText() = %q, %v; want %q", int(c.s), b, err, c.name)
		}
		if c.s != 0 && c.s.String() != c.name {
			t.Errorf("State(%d).String() = %q, want %q", int(c.s), c.s, c.name)
		}
		var back State = 99
		if err := back.UnmarshalText([]byte(c.name)); err != nil || back != c.s {
			t.Errorf("UnmarshalText(%q) = %v, %v; want %v", c.name, back, err, c.s)
		}
	}
	if _, err := State(4).MarshalText(); err == nil {
		t.Error("State(4) encodes")
	}
	for _, bad := range []string{"unknown", "Alive", "alive ", "0", "1"} {
		s := Alive
		if err := s.UnmarshalText([]byte(bad)); err == nil || s != Alive {
			t.Errorf("UnmarshalText(%q) = %v, %v; want an error and no change", bad, s, err)
		}
	}
}

// Entry.State encodes as the state's name (what /v1/peers has always
// served) and decodes back.
func TestEntryStateEncodesAsItsName(t *testing.T) {
	t.Parallel()
	f := newFx(t, 3)
	r := f.registry()
	for i := range f.agents {
		if _, err := r.Announce(f.record(t, i, 1, t0), Direct, t0); err != nil {
			t.Fatal(err)
		}
	}
	r.Tick(t0.Add(2*hb + time.Millisecond)) // all suspect
	if _, err := r.Heartbeat(f.agents[0].Public(), 2, t0.Add(3*hb), t0.Add(3*hb)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Leave(f.agents[1].Public(), 3, t0.Add(3*hb)); err != nil {
		t.Fatal(err)
	}
	entries := r.Entries()
	raw, err := json.Marshal(entries)
	if err != nil {
		t.Fatal(err)
	}
	var plain []struct {
		PeerID peer.ID `json:"peer_id"`
		State  string  `json:"state"`
	}
	if err := json.Unmarshal(raw, &plain); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i, e := range plain {
		k, err := trust.PublicKeyFromPeerID(e.PeerID)
		if err != nil {
			t.Fatal(err)
		}
		if want := r.State(k).String(); e.State != want {
			t.Fatalf("entry %d encodes state %q, want %q", i, e.State, want)
		}
		seen[e.State] = true
	}
	if len(seen) != 3 {
		t.Fatalf("states %v: want one agent in each", seen)
	}
	var back []Entry
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	for i := range back {
		if back[i].State != entries[i].State {
			t.Fatalf("entry %d decodes as %v, want %v", i, back[i].State, entries[i].State)
		}
	}
}
