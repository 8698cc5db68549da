package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/meshagent/meshagent/node"
)

// What the console's audit hook costs the node per record: with no page
// open (the baseline), and with consoleMaxTails pages open that all
// stopped reading (every send finds a full queue: the drop path).
func BenchmarkConsoleTailAdd(b *testing.B) {
	r := node.AuditRecord{Time: time.Now(), Direction: "in", Kind: "request", Sender: "12D3KooWSender", Recipient: "12D3KooWRecipient",
		Action: "read:logs", Decision: "reject", Reason: "not_holder", Detail: "not_holder: link 1: token is held by 12D3KooWOther", CorrelationID: "9f0c3e"}
	for _, tails := range []int{0, consoleMaxTails} {
		b.Run(fmt.Sprintf("tails=%d", tails), func(b *testing.B) {
			t := newAuditTail()
			for range tails {
				c, _, _ := t.open()
				for range consoleTailQueue {
					c.ch <- tailRecord{}
				}
			}
			b.ReportAllocs()
			for b.Loop() {
				t.add(r)
			}
		})
	}
}
