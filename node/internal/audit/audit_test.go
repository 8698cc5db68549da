package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// encodedLen is the length of s in JSON, quotes aside, as the auditor
// encodes it.
func encodedLen(t *testing.T, s string) int {
	t.Helper()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		t.Fatal(err)
	}
	return b.Len() - 3 // quotes, newline
}

// checkClean checks what cleanField promises of any s: valid printable
// UTF-8 within the cap in JSON, s itself when it fits, and otherwise a
// prefix of the cleaned s and a marker that counts what was left out.
func checkClean(t *testing.T, s string, most int) string {
	t.Helper()
	c := cleanField(s, most)
	if !utf8.ValidString(c) {
		t.Fatalf("cleanField(%q, %d) = %q: invalid UTF-8", s, most, c)
	}
	if n := encodedLen(t, c); n > most {
		t.Fatalf("cleanField(%q, %d) = %q: %d bytes in JSON", s, most, c, n)
	}
	head, tail, cut := strings.Cut(c, "…(+")
	if !cut {
		if encodedLen(t, s) <= most && utf8.ValidString(s) && !strings.ContainsFunc(s, notPrint) && c != s {
			t.Fatalf("cleanField(%q, %d) = %q: changed a string that fits", s, most, c)
		}
		return c
	}
	left, err := strconv.Atoi(strings.TrimSuffix(tail, " bytes)"))
	if err != nil || !strings.HasSuffix(tail, " bytes)") || left <= 0 {
		t.Fatalf("cleanField(%q, %d) = %q: marker %q", s, most, c, tail)
	}
	// head is the cleaned first len(s)-left bytes of s.
	if kept := len(s) - left; kept < 0 || cleanField(s[:kept], 1<<30) != head {
		t.Fatalf("cleanField(%q, %d) = %q: kept %d bytes, head %q", s, most, c, kept, head)
	}
	return c
}

func notPrint(r rune) bool { return cleanField(string(r), 8) == "?" && r != '?' }

func TestAuditCleanField(t *testing.T) {
	for _, c := range []struct {
		s    string
		most int
		want string
	}{
		{"", 16, ""},
		{"read:logs", 16, "read:logs"},
		{strings.Repeat("a", 16), 16, strings.Repeat("a", 16)}, // exactly at the cap
		{strings.Repeat("a", 17), 16, "aa…(+15 bytes)"},        // one over: 2 bytes and the marker
		{strings.Repeat("a", 40), 24, "aaaaaaaaaa…(+30 bytes)"},
		{"a\x00b\nc\x1b[31m\x7f", 32, "a?b?c?[31m?"},
		{"\xff\xfeok\xc3", 32, "??ok?"},                    // invalid UTF-8
		{"a\u2028b\u2029c\u202ed\u200be", 32, "a?b?c?d?e"}, // separators, bidi, zero width
		{"é✓🙂<>&", 32, "é✓🙂<>&"},                           // printable runes kept; no HTML escape
		{`"\"`, 6, `"\"`},                                  // 2 JSON bytes each: exactly 6
		{`"\"\`, 6, `"\"`},                                 // 8 JSON bytes, no room for a marker: cut
	} {
		got := cleanField(c.s, c.most)
		if c.want == "" && c.s != "" {
			checkClean(t, c.s, c.most)
			continue
		}
		if got != c.want {
			t.Errorf("cleanField(%q, %d) = %q, want %q", c.s, c.most, got, c.want)
		}
		checkClean(t, c.s, c.most)
	}
}

// A cut never splits a rune: a string of 2-, 3- and 4-byte runes is cut
// at every offset of the cap.
func TestAuditCleanFieldCutsAtRunes(t *testing.T) {
	for _, r := range []string{"é", "✓", "🙂"} {
		s := strings.Repeat(r, 100)
		for most := 20; most < 60; most++ {
			c := checkClean(t, s, most)
			if head, _, _ := strings.Cut(c, "…"); len(head)%len(r) != 0 || len(c) > most {
				t.Fatalf("cut %q at %d: %q", r, most, c)
			}
		}
	}
}

// Random strings from bytes that JSON escapes, multi-byte runes and
// invalid UTF-8, at random caps.
func TestAuditCleanFieldRandom(t *testing.T) {
	rng := mrand.New(mrand.NewPCG(11, 4))
	parts := []string{"\x00", "\x1f", "\"", "\\", "<", "a", "é", "✓", "🙂", "\u2028", "\xff", "\xe2\x9c", " "}
	for range 3000 {
		var b strings.Builder
		for range rng.IntN(80) {
			b.WriteString(parts[rng.IntN(len(parts))])
		}
		checkClean(t, b.String(), 24+rng.IntN(100))
	}
}

// A record of what a peer controls, at its worst, is one line of at most
// maxAuditLine bytes, however large its fields.
func TestAuditLineIsBounded(t *testing.T) {
	huge := strings.Repeat("\x01\"\u2028🙂", 1<<16)
	r := Record{Time: time.Date(2026, 12, 31, 23, 59, 59, 999999999, time.FixedZone("", -(12*3600+59*60))),
		CorrelationID: huge, Direction: Direction(huge), Kind: Kind(huge), Sender: huge, Recipient: huge, Action: huge,
		Decision: Decision(huge), Reason: huge, Detail: huge, LatencyMS: -math.MaxFloat64}
	var b bytes.Buffer
	New(&b).Write(r)
	if b.Len() > maxAuditLine || b.Len() < maxAuditLine-300 {
		t.Fatalf("a line of %d bytes; maxAuditLine is %d", b.Len(), maxAuditLine)
	}
	var back Record
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	t.Logf("worst line: %d bytes", b.Len())
}

// lockedBuffer is a log the summary timer may write to while a test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// records returns the lines written so far, and the counts of the summary
// lines by sender.
func (l *lockedBuffer) records(t *testing.T) (lines []Record, suppressed map[string]int) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	suppressed = map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(l.b.Bytes()))
	for sc.Scan() {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		if r.Reason == Suppressed {
			var n int
			if _, err := fmt.Sscanf(r.Detail, "%d rejections", &n); err != nil {
				t.Fatalf("summary %q: %v", r.Detail, err)
			}
			suppressed[r.Sender] += n
			continue
		}
		lines = append(lines, r)
	}
	return lines, suppressed
}

func reject(sender string) Record {
	return Record{Time: time.Now(), Direction: "in", Kind: "request", Sender: sender, Recipient: "self",
		Decision: "reject", Reason: "no_token"}
}

// One sender's rejections: its burst is logged, the rest counted in one
// summary line; the hook sees each; accepted lines are all logged.
func TestAuditRejectionsPerSender(t *testing.T) {
	var log lockedBuffer
	a := New(&log)
	hooked := 0
	a.hook = func(Record) { hooked++ }
	for range 1000 {
		a.Write(reject("mallory"))
	}
	for range 1000 {
		a.Write(Record{Time: time.Now(), Direction: "in", Kind: "request", Sender: "alice", Decision: "accept"})
	}
	// The summary comes within auditSummaryEvery.
	if err := pollFor(5*time.Second, func() error {
		if _, s := log.records(t); s["mallory"] == 0 {
			return errors.New("no summary")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	lines, suppressed := log.records(t)
	logged := 0
	for _, r := range lines {
		if r.Sender == "mallory" {
			logged++
		}
	}
	if logged < auditSourceBurst || logged > auditSourceBurst+4 {
		t.Errorf("%d of mallory's rejections logged; its burst is %d", logged, auditSourceBurst)
	}
	if logged+suppressed["mallory"] != 1000 {
		t.Errorf("%d logged and %d suppressed, of 1000", logged, suppressed["mallory"])
	}
	if accepted := len(lines) - logged; accepted != 1000 {
		t.Errorf("%d of 1000 accepted lines logged", accepted)
	}
	if hooked != 2000 {
		t.Errorf("the hook saw %d of 2000 records", hooked)
	}
}

// Fresh senders, each within its own burst, are bounded all together: the
// node-wide burst is logged, the rest counted in one summary line of
// "other senders"; the table of sources stays bounded.
func TestAuditRejectionsNodeWide(t *testing.T) {
	var log lockedBuffer
	a := New(&log)
	const senders = 2 * maxAuditSources
	for i := range senders {
		a.Write(reject(fmt.Sprintf("fresh-%d", i)))
	}
	a.mu.Lock()
	tracked := len(a.sources)
	a.mu.Unlock()
	if tracked > maxAuditSources {
		t.Errorf("%d sources tracked; the bound is %d", tracked, maxAuditSources)
	}
	a.summarize()
	lines, suppressed := log.records(t)
	if len(lines) < auditNodeBurst || len(lines) > auditNodeBurst+auditNodeRate {
		t.Errorf("%d of %d fresh senders' rejections logged; the node-wide burst is %d", len(lines), senders, auditNodeBurst)
	}
	if len(lines)+suppressed[""] != senders {
		t.Errorf("%d logged and %d suppressed, of %d", len(lines), suppressed[""], senders)
	}
}

// Of many flooding senders, the busiest are named in a summary each, the
// rest summed in one line.
func TestAuditSummaryNamesTheBusiest(t *testing.T) {
	var log lockedBuffer
	a := New(&log)
	const senders = auditSummarySources + 10
	for i := range senders {
		for range auditSourceBurst + 1 + i {
			a.Write(reject(fmt.Sprintf("s%02d", i)))
		}
	}
	a.summarize()
	_, suppressed := log.records(t)
	named := 0
	for s, n := range suppressed {
		if s != "" {
			named++
			if i, _ := strconv.Atoi(s[1:]); i < senders-auditSummarySources || n == 0 {
				t.Errorf("summary of %s (%d suppressed), not of the busiest", s, n)
			}
		}
	}
	if named != auditSummarySources || suppressed[""] == 0 {
		t.Errorf("%d senders named, %d others: %v", named, suppressed[""], suppressed)
	}
}

// Outbound rejections are bounded by their recipient, the remote peer
// whose errors they carry.
func TestAuditOutboundRejectionsByRecipient(t *testing.T) {
	var log lockedBuffer
	a := New(&log)
	for range 200 {
		a.Write(Record{Time: time.Now(), Direction: "out", Kind: "request", Sender: "self", Recipient: "callee",
			Decision: "reject", Reason: "handler_error", Detail: strings.Repeat("\x00", 1<<16)})
	}
	a.summarize()
	lines, suppressed := log.records(t)
	if len(lines) > auditSourceBurst+4 || len(lines)+suppressed["self"] != 200 {
		t.Errorf("%d logged, %d suppressed, of 200", len(lines), suppressed["self"])
	}
	for _, r := range lines {
		if len(r.Detail) > auditCapDetail {
			t.Fatalf("detail of %d bytes", len(r.Detail))
		}
	}
}

// Without a log the hook still sees every record, cleaned.
func TestAuditHookOnly(t *testing.T) {
	a := New(nil)
	var got []Record
	a.hook = func(r Record) { got = append(got, r) }
	for range 100 {
		a.Write(reject(strings.Repeat("\x07", 1000)))
	}
	if len(got) != 100 || len(got[0].Sender) > auditCapField || strings.Contains(got[0].Sender, "\x07") {
		t.Fatalf("%d records, sender %q", len(got), got[0].Sender)
	}
}

func pollFor(d time.Duration, cond func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}
