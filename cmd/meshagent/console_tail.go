package main

import (
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshagent/meshagent/node"
)

// The live tail's bounds: what the console holds is at most
// consoleMaxTails*consoleTailQueue + consoleTailHistory records, each
// cleaned and size-bound by the audit log.
const (
	consoleMaxTails    = 8   // live tails open at once; one more is refused (503)
	consoleTailQueue   = 256 // records queued for one tail; past it they are dropped and counted
	consoleTailHistory = 100 // the latest records, which a new tail starts with
	// consoleTailWrite is how long one event may take to write: a tail
	// that does not read for that long is closed.
	consoleTailWrite = 10 * time.Second
	// consoleNamesEvery is how often a tail refreshes the agents' names.
	consoleNamesEvery = time.Second
)

// tailRecord is one audit record as the tail sends it (JSON).
type tailRecord struct {
	Time          string  `json:"time"`
	Direction     string  `json:"dir"`
	Kind          string  `json:"kind"`
	From          string  `json:"from,omitempty"`
	FromName      string  `json:"from_name,omitempty"`
	To            string  `json:"to,omitempty"`
	ToName        string  `json:"to_name,omitempty"`
	Action        string  `json:"action,omitempty"`
	Decision      string  `json:"decision"`
	Reason        string  `json:"reason,omitempty"`
	Detail        string  `json:"detail,omitempty"`
	CorrelationID string  `json:"cid,omitempty"`
	LatencyMS     float64 `json:"latency_ms"`
}

func tailRecordOf(r node.AuditRecord) tailRecord {
	return tailRecord{Time: r.Time.UTC().Format("15:04:05.000"), Direction: string(r.Direction), Kind: string(r.Kind),
		From: r.Sender, To: r.Recipient, Action: r.Action, Decision: string(r.Decision), Reason: r.Reason,
		Detail: r.Detail, CorrelationID: r.CorrelationID, LatencyMS: r.LatencyMS}
}

// auditTail hands the node's audit records to the console's live tails.
// add never blocks: each tail has a bounded queue, and a tail that falls
// behind loses records, counted, rather than slowing the node.
type auditTail struct {
	mu      sync.Mutex
	tails   map[*tail]struct{}
	history [consoleTailHistory]tailRecord // a ring; next is the oldest once full
	next    int
	held    int
	// dropped counts the records every tail lost.
	dropped atomic.Int64
}

// tail is one open live tail.
type tail struct {
	ch      chan tailRecord
	dropped atomic.Int64
}

func newAuditTail() *auditTail { return &auditTail{tails: map[*tail]struct{}{}} }

// add hands r to every tail, and keeps it for the next ones. It is the
// node's audit hook: it may run on any goroutine and must not block.
func (t *auditTail) add(r node.AuditRecord) {
	rec := tailRecordOf(r)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.history[t.next] = rec
	t.next = (t.next + 1) % len(t.history)
	t.held = min(t.held+1, len(t.history))
	for c := range t.tails {
		select {
		case c.ch <- rec:
		default:
			c.dropped.Add(1)
			t.dropped.Add(1)
		}
	}
}

// open returns a new tail and the records it starts with (oldest first),
// or false when consoleMaxTails are open.
func (t *auditTail) open() (*tail, []tailRecord, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.tails) >= consoleMaxTails {
		return nil, nil, false
	}
	c := &tail{ch: make(chan tailRecord, consoleTailQueue)}
	t.tails[c] = struct{}{}
	past := make([]tailRecord, 0, t.held)
	for i := range t.held {
		past = append(past, t.history[(t.next-t.held+i+len(t.history))%len(t.history)])
	}
	return c, past, true
}

func (t *auditTail) close(c *tail) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.tails, c)
}

// serveEvents streams the audit records as server-sent events, the recent
// ones first: a message per record (tailRecord), and a "dropped" event
// ({"dropped": N}, N since this tail opened) after records were lost.
func (c *consoleServer) serveEvents(w http.ResponseWriter, r *http.Request) {
	tl, past, ok := c.tail.open()
	if !ok {
		http.Error(w, "meshagent console: too many live tails open; close one", http.StatusServiceUnavailable)
		return
	}
	defer c.tail.close(tl)
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Now().Add(consoleTailWrite))
	s, ok := newSSE(w)
	if !ok {
		return
	}
	names := c.names()
	namedAt := time.Now()
	send := func(rec tailRecord) error {
		if time.Since(namedAt) > consoleNamesEvery {
			names, namedAt = c.names(), time.Now()
		}
		rec.FromName, rec.ToName = names[rec.From], names[rec.To]
		_ = rc.SetWriteDeadline(time.Now().Add(consoleTailWrite))
		return s.send(rec)
	}
	for _, rec := range past {
		if send(rec) != nil {
			return
		}
	}
	var told int64
	for {
		select {
		case <-r.Context().Done():
			return
		case rec := <-tl.ch:
			if send(rec) != nil {
				return
			}
		}
		if d := tl.dropped.Load(); d != told {
			told = d
			_ = rc.SetWriteDeadline(time.Now().Add(consoleTailWrite))
			if s.event("dropped", map[string]int64{"dropped": d}) != nil {
				return
			}
		}
	}
}

// names maps the peer ID of every agent in the registry to its name.
func (c *consoleServer) names() map[string]string {
	m := map[string]string{c.n.ID().String(): c.n.Credential().Name}
	for _, e := range c.n.Peers() {
		m[e.PeerID.String()] = e.Name
	}
	return m
}
