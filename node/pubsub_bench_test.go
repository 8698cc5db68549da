//go:build meshsim

package node_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"

	"github.com/meshagent/meshagent/simulations"
)

const benchNodes = 10

// deliveries publishes b.N messages one at a time from rotating publishers
// and returns, per message, the time until all other nodes received it.
// Every receiver reports (node, seq) on arrivals.
func deliveries(b *testing.B, n int, publish func(from, seq int) error, arrivals chan [2]int) []time.Duration {
	wait := func(seq int, timeout time.Duration) bool {
		seen := map[int]bool{}
		deadline := time.After(timeout)
		for len(seen) < n-1 {
			select {
			case a := <-arrivals:
				if a[1] == seq {
					seen[a[0]] = true
				}
			case <-deadline:
				return false
			}
		}
		return true
	}
	// Warm up until a message reaches everyone (the mesh has formed).
	for i := 0; ; i++ {
		if err := publish(i%n, 1<<30+i); err != nil {
			b.Fatal(err)
		}
		if wait(1<<30+i, 2*time.Second) {
			break
		}
		if i > 30 {
			b.Fatal("the mesh never formed")
		}
	}
	lat := make([]time.Duration, 0, b.N)
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if err := publish(i%n, i); err != nil {
			b.Fatal(err)
		}
		if !wait(i, 10*time.Second) {
			b.Fatalf("message %d did not reach every node", i)
		}
		lat = append(lat, time.Since(start))
	}
	return lat
}

func seqBody(i int) []byte { return binary.BigEndian.AppendUint64(make([]byte, 0, 256), uint64(i)) }

// BenchmarkPubsub10 measures delivery of signed envelopes to all of 10
// meshagent nodes (each message through the decision function on every
// node) against plain gossipsub on 10 plain TLS hosts with the same
// topology and options, in the same run.
func BenchmarkPubsub10(b *testing.B) {
	ctx := context.Background()
	// Plain gossipsub.
	hosts := make([]host.Host, benchNodes)
	topics := make([]*pubsub.Topic, benchNodes)
	precv := make(chan [2]int, 1<<16)
	for i := range hosts {
		h, err := libp2p.New(libp2p.Security(libp2ptls.ID, libp2ptls.New), libp2p.Transport(tcp.NewTCPTransport),
			libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay(), libp2p.DisableMetrics())
		if err != nil {
			b.Fatal(err)
		}
		defer h.Close()
		ps, err := pubsub.NewGossipSub(ctx, h, pubsub.WithFloodPublish(true), pubsub.WithPeerExchange(false))
		if err != nil {
			b.Fatal(err)
		}
		hosts[i] = h
		topics[i], _ = ps.Join("bench")
		sub, _ := topics[i].Subscribe()
		go func(i int) {
			for {
				m, err := sub.Next(ctx)
				if err != nil {
					return
				}
				if m.GetFrom() != hosts[i].ID() {
					precv <- [2]int{i, int(binary.BigEndian.Uint64(m.Data))}
				}
			}
		}(i)
	}
	for i := range hosts {
		for j := i + 1; j < benchNodes; j++ {
			if err := hosts[i].Connect(ctx, peer.AddrInfo{ID: hosts[j].ID(), Addrs: hosts[j].Addrs()}); err != nil {
				b.Fatal(err)
			}
		}
	}
	// meshagent.
	names := make([]string, benchNodes)
	for i := range names {
		names[i] = fmt.Sprintf("agent-%d", i)
	}
	// Production liveness intervals: the test default (250 ms heartbeats)
	// would add 40 registry messages a second that the baseline does not
	// carry.
	m, err := simulations.NewMesh(ctx, names, simulations.Options{HeartbeatInterval: 30 * time.Second, DeadAfter: 90 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	if err := m.ConnectAll(ctx); err != nil {
		b.Fatal(err)
	}
	mrecv := make(chan [2]int, 1<<16)
	for i, name := range names {
		if _, err := m.Grant(name, []string{"publish:bench"}, nil, time.Hour); err != nil {
			b.Fatal(err)
		}
		sub, err := m.Agents[name].Node.Subscribe("bench")
		if err != nil {
			b.Fatal(err)
		}
		go func(i int) {
			for {
				msg, err := sub.Next(ctx)
				if err != nil {
					return
				}
				mrecv <- [2]int{i, int(binary.BigEndian.Uint64(msg.Body))}
			}
		}(i)
	}
	b.ResetTimer()
	plain := deliveries(b, benchNodes, func(from, seq int) error { return topics[from].Publish(ctx, seqBody(seq)) }, precv)
	mesh := deliveries(b, benchNodes, func(from, seq int) error {
		return m.Agents[names[from]].Node.Publish(ctx, "bench", "publish:bench", seqBody(seq))
	}, mrecv)
	b.StopTimer()
	b.ReportMetric(percentile(plain, 0.5), "plain_p50_us")
	b.ReportMetric(percentile(plain, 0.99), "plain_p99_us")
	b.ReportMetric(percentile(mesh, 0.5), "mesh_p50_us")
	b.ReportMetric(percentile(mesh, 0.99), "mesh_p99_us")
	b.ReportMetric(percentile(mesh, 0.5)/percentile(plain, 0.5), "p50_ratio")
}
