//go:build meshsim

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/meshagent/simulations"
)

// A /v1/subscribe process that stops reading while bob publishes 200 KiB
// messages: alice's daemon holds at most maxSubscriberBytes for it, then
// drops what it queued, cancels the subscription and, once the process
// reads again, ends the stream with an event saying it fell behind.
// (Both daemons run in this process: the heap measured is theirs.)
func TestBoundedSubscriber(t *testing.T) {
	_, a, b, _, _ := twoDaemons(t, "publish:tasks", "publish:tasks", func(_ string, fc *fileConfig) {
		fc.Heartbeat, fc.DeadAfter = time.Second, 10*time.Second // gossip keeps messages about 1 s
	})
	publish := func(body any) error {
		return apiCall(b, "POST", "/v1/publish", map[string]any{"topic": "tasks", "action": "publish:tasks", "body": body}, io.Discard)
	}
	sub := openRawStream(t, a, "/v1/subscribe?topic=tasks")
	first := make(chan sseEvent, 1)
	go func() {
		if ev, err := sub.read(); err == nil {
			first <- ev
		}
	}()
	if err := simulations.WaitFor(15*time.Second, func() error {
		if err := publish(map[string]int{"job": 0}); err != nil {
			return err
		}
		select {
		case <-first:
			return nil
		case <-time.After(200 * time.Millisecond):
			return fmt.Errorf("no message delivered")
		}
	}); err != nil {
		t.Fatal(err)
	}
	// From now on the process reads nothing.
	heap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	base := heap()
	received := func(p string) float64 {
		return metricSum(p, "meshagent_decisions_total", `direction="in"`, `kind="message"`, `decision="accept"`)
	}
	m0 := received(scrape(t, a))
	big := strings.Repeat("a", 200<<10)
	const enough = 80 // 16 MiB: twice the bound
	var maxQueued float64
	sent := 0
	for deadline := time.Now().Add(45 * time.Second); ; sent++ { // slow on a loaded machine
		if err := publish(big); err != nil {
			t.Fatal(err)
		}
		p := scrape(t, a)
		maxQueued = max(maxQueued, metricSum(p, "meshagent_subscriber_queued_bytes"))
		if metricSum(p, "meshagent_subscribers_dropped_total") > 0 || received(p)-m0 >= enough {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %d messages of 200 KiB, alice received %v and dropped no subscriber", sent, received(p)-m0)
		}
	}
	t.Logf("%d messages of 200 KiB published; at most %.1f MiB queued for the stalled process", sent, maxQueued/(1<<20))
	if maxQueued > maxSubscriberBytes {
		t.Fatalf("queued %.0f bytes, over the bound %d", maxQueued, maxSubscriberBytes)
	}
	// Once gossip forgot the messages, the daemons hold no more than the
	// bound above the start (before the bound: about 650 KiB a message).
	var held int64
	if err := simulations.WaitFor(8*time.Second, func() error {
		held = int64(heap()) - int64(base)
		if held > maxSubscriberBytes+4<<20 { // the bound, and slack for libp2p's own state
			return fmt.Errorf("heap %.1f MiB above the start with the process stalled", float64(held)/(1<<20))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("heap %.1f MiB above the start", float64(held)/(1<<20))

	// The process reads again: what was written before it stalled, then
	// the reason, then the end.
	var last sseEvent
	got := 0
	for {
		ev, err := sub.readWithin(t, 10*time.Second)
		if err != nil {
			break
		}
		if last.name != "" {
			t.Fatalf("an event after the last one: %+v", ev)
		}
		last = ev
		got++
	}
	var e apiError
	if last.name != "error" || json.Unmarshal([]byte(last.data), &e) != nil || e.Code != fellBehindCode || !strings.Contains(e.Error, "fell behind") {
		t.Fatalf("the stream ended after %d events with %+v, not with the fell-behind event", got, last)
	}
	t.Logf("the process got %d messages, then: %s", got-1, e.Error)
	if err := simulations.WaitFor(5*time.Second, func() error {
		if q := metricSum(scrape(t, a), "meshagent_subscriber_queued_bytes"); q != 0 {
			return fmt.Errorf("%v bytes still queued", q)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Subscribing again works.
	again := openRawStream(t, a, "/v1/subscribe?topic=tasks")
	next := make(chan sseEvent, 1)
	go func() {
		if ev, err := again.read(); err == nil {
			next <- ev
		}
	}()
	if err := simulations.WaitFor(15*time.Second, func() error {
		if err := publish(map[string]int{"job": 1}); err != nil {
			return err
		}
		select {
		case ev := <-next:
			if !strings.Contains(ev.data, `"job":1`) {
				t.Fatalf("resubscribed, got %s", ev.data)
			}
			return nil
		case <-time.After(200 * time.Millisecond):
			return fmt.Errorf("no message after subscribing again")
		}
	}); err != nil {
		t.Fatal(err)
	}
}
