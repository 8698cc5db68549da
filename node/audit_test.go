//go:build meshsim

package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/libp2p/go-msgio"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/wire"
)

// The audit log's documented bounds (docs/security.md; node/audit.go).
const (
	auditMaxRecord    = 1536 // bytes of one line, whatever a peer sends
	auditSenderBurst  = 32   // reject lines of one sender at once
	auditSenderRate   = 2    // and a second after that
	auditNodeBurst    = 100  // reject lines of all senders at once
	auditNodeRate     = 50   // and a second after that
	auditSummaryLines = 17   // summary lines a second at most
)

// auditCounter is an audit log that counts its bytes: all, of rejections,
// and of rejections by sender.
type auditCounter struct {
	mu       sync.Mutex
	total    int
	rejects  int
	rejected int // reject lines
	lines    int
	longest  int
	bySender map[string]int
	summary  map[string]string // sender: detail of its last summary line
}

func newAuditCounter() *auditCounter {
	return &auditCounter{bySender: map[string]int{}, summary: map[string]string{}}
}

func (c *auditCounter) Write(p []byte) (int, error) {
	var r node.AuditRecord
	err := json.Unmarshal(p, &r)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total += len(p)
	c.lines++
	c.longest = max(c.longest, len(p))
	if err == nil && r.Decision == "reject" {
		c.rejects += len(p)
		c.rejected++
		c.bySender[r.Sender] += len(p)
		if r.Reason == "audit_suppressed" {
			c.summary[r.Sender] = r.Detail
		}
	}
	return len(p), nil
}

func (c *auditCounter) snapshot() (total, rejects, lines, longest int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total, c.rejects, c.lines, c.longest
}

func (c *auditCounter) rejectLines() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rejected
}

func (c *auditCounter) of(sender string) (bytes int, summary string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bySender[sender], c.summary[sender]
}

// auditHonestCalls calls the worker from the orchestrator until stop, and
// counts the calls that succeeded and failed.
func auditHonestCalls(m *simulations.Mesh, stop <-chan struct{}) (ok, failed *atomic.Int64, done <-chan struct{}) {
	ok, failed = new(atomic.Int64), new(atomic.Int64)
	d := make(chan struct{})
	go func() {
		defer close(d)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := call(m, "orchestrator", "worker", "read:logs"); err != nil {
				failed.Add(1)
			} else {
				ok.Add(1)
			}
		}
	}()
	return ok, failed, d
}

// An enrolled insider that floods a node with requests whose action is
// 64 KiB of control characters (6 bytes each in JSON) grows the node's
// audit log by at most its per-sender allowance, each line capped; honest
// calls go on. (Before the cap and the rate bound: 75 MiB of log in 1 s
// from 11 MiB sent, lines of 634 KiB.)
func TestAuditControlCharacterFloodIsBounded(t *testing.T) {
	m, log := auditMesh(t)
	mallory, worker := m.Agents["mallory"].Node, m.Agents["worker"]
	ctl := make([]byte, 64<<10)
	for i := range ctl {
		ctl[i] = byte(1 + i%31)
	}
	action := string(ctl)
	raw, err := mallory.SealRequest(worker.ID(), action, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mallory.SendRaw(context.Background(), worker.ID(), raw); err == nil {
		t.Fatal("the worker accepted a request for a 64 KiB action")
	}

	// The honest rate without the attack, then with it.
	t0 := time.Now()
	for range 200 {
		if _, err := call(m, "orchestrator", "worker", "read:logs"); err != nil {
			t.Fatal(err)
		}
	}
	baseline := 200 / time.Since(t0).Seconds()

	total0, rejects0, _, _ := log.snapshot()
	sender0, _ := log.of(mallory.ID().String())
	stop := make(chan struct{})
	ok, failed, done := auditHonestCalls(m, stop)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
	defer cancel()
	start := time.Now()
	var sent, requests atomic.Int64
	// A second, and at least twice the sender's burst (a slow run, -race).
	more := func() bool {
		return ctx.Err() == nil && (time.Since(start) < time.Second || requests.Load() < 2*auditSenderBurst)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for more() {
				raw, err := mallory.SealRequest(worker.ID(), action, nil, nil)
				if err != nil {
					return
				}
				_, _ = mallory.SendRaw(ctx, worker.ID(), raw)
				sent.Add(int64(len(raw)))
				requests.Add(1)
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-done
	elapsed := time.Since(start)
	during := float64(ok.Load()) / elapsed.Seconds()

	// The suppressed lines are summed up within a second or so.
	if err := simulations.WaitFor(5*time.Second, func() error {
		if _, s := log.of(mallory.ID().String()); s == "" {
			return errors.New("no summary of the insider's suppressed rejections")
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	window := time.Since(start).Seconds()
	total, rejects, _, longest := log.snapshot()
	senderBytes, summary := log.of(mallory.ID().String())
	senderBytes -= sender0
	t.Logf("insider sent %d KiB in %s; the worker's log grew %d KiB (%d KiB of rejections, %d KiB of the insider's), longest line %d B; %s",
		sent.Load()>>10, elapsed.Round(time.Millisecond), (total-total0)>>10, (rejects-rejects0)>>10, senderBytes>>10, longest, summary)
	t.Logf("honest calls: %.0f/s before, %.0f/s during (%d failed)", baseline, during, failed.Load())

	if longest > auditMaxRecord {
		t.Errorf("an audit line of %d bytes; the bound is %d", longest, auditMaxRecord)
	}
	// One sender: its burst, its rate, one summary a second.
	if limit := int((auditSenderBurst + auditSenderRate*window + window + 1) * auditMaxRecord); senderBytes > limit {
		t.Errorf("the insider's rejections took %d bytes of log in %.1f s; the bound is %d", senderBytes, window, limit)
	}
	if failed.Load() > 0 {
		t.Errorf("%d honest calls failed during the attack", failed.Load())
	}
	if ok.Load() == 0 {
		t.Error("no honest call during the attack")
	}
}

// A dial loop of fresh identities from several source IPs, each refused at
// admission, costs the node a bounded number of audit lines a second
// however many identities it uses: each source is bounded by the gate's
// budget, all of them together by the auditor's node-wide bound. (Before
// the node-wide bound: one line, 340 bytes, per attempt, 512 in 1.8 s.)
func TestAuditFreshIdentityDialLoopIsBounded(t *testing.T) {
	m, log := auditMesh(t)
	worker := m.Agents["worker"].Node
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	target := peer.AddrInfo{ID: worker.ID(), Addrs: worker.Host().Addrs()}

	_, rejects0, _, _ := log.snapshot()
	lines0 := log.rejectLines()
	// Each source dials as fast as the gate lets it, until 400 attempts
	// reached admission (or 6 s): before the node-wide bound, one line or
	// more per attempt, and more than 85 attempts a second (110 to 290
	// here) exceed it.
	const sources = 8
	var refused atomic.Int64
	start := time.Now()
	loop, stop := context.WithTimeout(ctx, 6*time.Second)
	defer stop()
	more := func() bool { return loop.Err() == nil && refused.Load() < 400 }
	var wg sync.WaitGroup
	for i := range 4 * sources {
		s := i % sources
		wg.Add(1)
		go func() {
			defer wg.Done()
			for more() {
				h, err := libp2p.New(libp2p.ListenAddrStrings(fmt.Sprintf("/ip4/127.0.0.%d/tcp/0", 10+s)),
					libp2p.Security(libp2ptls.ID, libp2ptls.New), libp2p.Transport(tcp.NewTCPTransport),
					libp2p.DisableRelay(), libp2p.DisableMetrics())
				if err != nil {
					t.Error(err)
					return
				}
				if h.Connect(loop, target) == nil {
					if s, err := h.NewStream(loop, worker.ID(), wire.ProtocolAdmission); err == nil {
						refused.Add(1)
						_ = msgio.NewVarintWriter(s).WriteMsg([]byte("not a hello"))
						_, _ = s.Read(make([]byte, 1)) // reset once refused
					}
				}
				h.Close()
			}
		}()
	}
	wg.Wait()
	_, rejects, _, _ := log.snapshot()
	bytes, lines := rejects-rejects0, log.rejectLines()-lines0
	elapsed := time.Since(start)
	perAttempt := float64(bytes) / float64(max(refused.Load(), 1))
	t.Logf("%d fresh identities from %d sources refused at admission in %s: %d reject lines, %d B, %.0f B per attempt",
		refused.Load(), sources, elapsed.Round(time.Millisecond), lines, bytes, perAttempt)
	if refused.Load() < 2*auditNodeBurst {
		t.Skipf("only %d attempts reached admission: too slow a run to pass the node-wide burst", refused.Load())
	}
	// The node-wide bound; fresh senders have no summary of their own,
	// only the one of "other senders", once a second.
	if limit := auditNodeBurst + int(auditNodeRate*elapsed.Seconds()+elapsed.Seconds()+1); lines > limit {
		t.Errorf("the dial loop wrote %d reject lines in %s; the bound is %d", lines, elapsed.Round(time.Millisecond), limit)
	}
	if bytes > lines*auditMaxRecord {
		t.Errorf("%d bytes in %d lines: a line over %d bytes", bytes, lines, auditMaxRecord)
	}
	if _, err := call(m, "orchestrator", "worker", "read:logs"); err != nil {
		t.Fatalf("honest call after the dial loop: %v", err)
	}
}
