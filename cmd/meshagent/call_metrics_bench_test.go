package main

import (
	"testing"
	"time"

	"github.com/meshagent/meshagent/node"
)

// What the call histogram adds to the audit hook, per call record, next
// to the decisions counter the hook already had (the baseline, measured
// in the same run).
func BenchmarkCallMetrics(b *testing.B) {
	m := newDaemonMetrics()
	r := node.AuditRecord{Time: time.Now(), Direction: "in", Kind: "request", Action: pingAction, Decision: "accept", LatencyMS: 1.5}
	b.Run("decisions-counter", func(b *testing.B) {
		for b.Loop() {
			m.decisions.WithLabelValues(label(knownDirections, string(r.Direction)), label(knownKinds, string(r.Kind)),
				label(knownDecisions, string(r.Decision)), label(knownReasons, r.Reason)).Inc()
		}
	})
	b.Run("call-histogram", func(b *testing.B) {
		for b.Loop() {
			m.observeCall(nil, r) // a known action: the node is not asked
		}
	})
}
