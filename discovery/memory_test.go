package discovery

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"runtime"
	"testing"
	"time"

	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
)

// wireRecordsAdvertising returns k records as they arrive on the wire: agents named
// like the simulations' ("agent-0042"), each with a TCP and a QUIC address.
// Each advertises actions scopes ("call:tool-number-000"...) and a
// digest; with distinct, every agent names its own ("call:t0042-number-000"...).
func wireRecordsAdvertising(tb testing.TB, f *fx, k, actions int, distinct bool) [][]byte {
	tb.Helper()
	out := make([][]byte, k)
	for i := range out {
		seed := make([]byte, 32)
		binary.BigEndian.PutUint64(seed, uint64(i)+1000)
		id, err := trust.GenerateIdentity(bytes.NewReader(seed))
		if err != nil {
			tb.Fatal(err)
		}
		c, err := trust.IssueCredential(f.anchor, id.Public(), fmt.Sprintf("agent-%04d", i), t0.Add(-time.Hour), 24*time.Hour)
		if err != nil {
			tb.Fatal(err)
		}
		addrs := []ma.Multiaddr{ma.StringCast(fmt.Sprintf("/ip4/10.0.%d.%d/tcp/4001", i/250, i%250)),
			ma.StringCast(fmt.Sprintf("/ip4/10.0.%d.%d/udp/4001/quic-v1", i/250, i%250))}
		var names []string
		for j := range actions {
			if distinct {
				names = append(names, fmt.Sprintf("call:t%04d-number-%03d", i, j))
			} else {
				names = append(names, fmt.Sprintf("call:tool-number-%03d", j))
			}
		}
		r, err := NewRecordAdvertising(id, c, addrs, 1, 30*time.Second, t0, names, [32]byte{byte(i)})
		if err != nil {
			tb.Fatal(err)
		}
		out[i], _ = proto.Marshal(r.Proto())
	}
	return out
}

// BenchmarkRegistryMemory measures what a registry keeps per agent: the
// heap after a GC, less the heap before, once k records arrived from the
// wire and were applied. Every node of a mesh of N keeps N of these, so at
// N = 500 this figure times 500 is a node's registry.
// Sub-benchmarks: records advertising 0, 8 and 32 actions, the same
// ones for every agent (replicas of one service, and the simulations),
// and 32 of its own for every agent (nothing to share).
func BenchmarkRegistryMemory(b *testing.B) {
	for _, actions := range []int{0, 8, MaxActions} {
		b.Run(fmt.Sprintf("actions=%d", actions), func(b *testing.B) { benchRegistryMemory(b, actions, false) })
	}
	b.Run(fmt.Sprintf("actions=%d/distinct", MaxActions), func(b *testing.B) { benchRegistryMemory(b, MaxActions, true) })
}

func benchRegistryMemory(b *testing.B, actions int, distinct bool) {
	const k = 2000
	f := newFx(b, 0)
	wire := wireRecordsAdvertising(b, f, k, actions, distinct)
	var perAgent float64
	for i := 0; i < b.N; i++ {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		reg := NewRegistry(Config{Verifier: f.v, Self: f.self.Public()})
		for _, w := range wire {
			var a protocolpb.Announcement
			if err := proto.Unmarshal(w, &a); err != nil {
				b.Fatal(err)
			}
			rec, err := ParseRecord(&a)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := reg.Announce(rec, Direct, t0); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if reg.Len() != k {
			b.Fatalf("%d agents listed, want %d", reg.Len(), k)
		}
		perAgent = float64(after.HeapAlloc-before.HeapAlloc) / k
		runtime.KeepAlive(reg)
	}
	b.ReportMetric(perAgent, "B/agent")
	b.ReportMetric(float64(len(wire[0])), "wire-B/record")
}
