// Package audit writes meshagent's audit log: one JSON line per call,
// message, admission, liveness change, revocation and renewal a node
// sees, accepted or refused, with what a peer can make it hold bounded
// (see Log). Records never hold bodies, keys or tokens.
package audit

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/time/rate"
)

// Record is one line of the audit log. It never holds bodies, keys or
// tokens.
type Record struct {
	Time          time.Time `json:"time"`
	CorrelationID string    `json:"correlation_id,omitempty"`
	Traceparent   string    `json:"traceparent,omitempty"` // the sender's signed W3C claim: size-bound, never trusted
	Tracestate    string    `json:"tracestate,omitempty"`
	Direction     Direction `json:"direction"`
	Kind          Kind      `json:"kind"`
	Sender        string    `json:"sender,omitempty"`
	Recipient     string    `json:"recipient,omitempty"` // a peer, or a topic
	Action        string    `json:"action,omitempty"`
	Decision      Decision  `json:"decision"`
	Reason        string    `json:"reason,omitempty"` // a stable reason code
	Detail        string    `json:"detail,omitempty"`
	LatencyMS     float64   `json:"latency_ms"`
}

// Direction says whether a record is of something that came in or went
// out.
type Direction string

// Directions.
const (
	In  Direction = "in"
	Out Direction = "out"
)

// Kind is what a record is about.
type Kind string

// Kinds, as written.
const (
	Request      Kind = "request"    // an RPC call, either side
	Message      Kind = "message"    // a pubsub message, either side
	Admission    Kind = "admission"  // a peer's credential exchange, or its cut-off
	Liveness     Kind = "liveness"   // an agent's change of state in the registry
	Revocation   Kind = "revocation" // a revocation applied, or a relayed one refused
	Renewal      Kind = "renewal"    // a credential renewal, served or obtained
	Announcement Kind = "record"     // a relayed registry record refused
	Leave        Kind = "leave"      // a relayed leave refused
	Beat         Kind = "beat"       // a relayed heartbeat refused
	Summary      Kind = "audit"      // lines this log left out, counted
)

// Decision is what the node decided, or for a liveness record the
// agent's new state.
type Decision string

// Decisions, as written. A liveness record carries the state: alive,
// suspect, dead or removed.
const (
	Accept  Decision = "accept"
	Reject  Decision = "reject"
	Alive   Decision = "alive"
	Suspect Decision = "suspect"
	Dead    Decision = "dead"
	Removed Decision = "removed"
)

// What a peer can make the audit log hold. Much of a record is a peer's
// (an action, an error text, a remote error code), so:
//
//   - Every string field is cleaned (see cleanField) and capped in JSON
//     bytes: a line is at most maxAuditLine bytes whatever a peer sends.
//   - Reject lines are bounded per source (the sender of what came in, the
//     recipient of what went out): 32 at once, then 2 a second; and for
//     all sources together: 100 at once, then 50 a second. Lines past a
//     bound are counted, and each second a summary line (reason
//     audit_suppressed) says how many, one per source for the 16 busiest
//     and one for the rest. So one flooding source adds at most 3 lines
//     a second, and any number of fresh identities 50 + 17 lines a second
//     (at most 100 KiB/s; about 20 KiB/s of real lines).
//   - Other lines (accept, liveness) are never suppressed: what a peer
//     makes the node accept is bounded where it is accepted.
//
// The hook sees every record, cleaned, suppressed or not, and no summary:
// counts drawn from it (metrics, tests) stay exact.
const (
	auditCapDetail = 512 // Detail
	auditCapField  = 128 // Sender, Recipient, Action, Reason
	auditCapShort  = 64  // CorrelationID, Direction, Kind, Decision
	maxAuditLine   = 1536

	auditSourceBurst    = 32
	auditSourceEvery    = 500 * time.Millisecond // 2 a second
	auditNodeBurst      = 100
	auditNodeRate       = 50 // a second
	auditSummaryEvery   = time.Second
	auditSummarySources = 16
	maxAuditSources     = 4096 // sources tracked; more share the node-wide bound only
)

// Suppressed is the reason code of a summary line.
const Suppressed = "audit_suppressed"

// Log is an audit log. Its methods are safe for concurrent use.
type Log struct {
	mu  sync.Mutex
	enc *json.Encoder // nil: no log, only the hook
	// hook, when set, sees every record (tests, the demo, metrics).
	hook func(Record)

	node    *rate.Limiter           // reject lines of all sources
	sources map[string]*auditSource // by direction and source
	swept   time.Time               // when a full sources was last swept
	others  auditSource             // suppressed by the node-wide bound, or untracked
	pending bool                    // a summary is scheduled
}

// auditSource is one source's reject lines: its budget, and what was
// suppressed since the last summary.
type auditSource struct {
	lim        *rate.Limiter
	suppressed int
	last       Record // the last one suppressed: time, direction, sender, recipient
}

// New returns a log that writes to w; nil or io.Discard keeps no log, only
// the hook.
func New(w io.Writer) *Log {
	if w == nil || w == io.Discard {
		return &Log{}
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // '<' in 1 byte, not 6
	return &Log{enc: enc, node: rate.NewLimiter(auditNodeRate, auditNodeBurst), sources: map[string]*auditSource{}}
}

// Write cleans r, writes it unless a bound leaves it out, and shows it to
// the hook.
func (a *Log) Write(r Record) {
	r = cleanRecord(r)
	a.mu.Lock()
	if a.enc != nil && a.admit(r) {
		_ = a.enc.Encode(r) // an audit sink that fails is reported by its owner
	}
	hook := a.hook
	a.mu.Unlock()
	if hook != nil {
		hook(r) // without the lock: a hook may write records itself
	}
}

// SetHook makes f see every record as it is written, cleaned, whether
// the log keeps it or not (summaries aside). f may be called from several
// goroutines at once, pubsub's event loop among them: it must not block.
func (a *Log) SetHook(f func(Record)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.hook = f
}

// admit reports whether r goes into the log, and counts it when not.
func (a *Log) admit(r Record) bool {
	if r.Decision != Reject {
		return true
	}
	src := r.Sender
	if r.Direction == Out {
		src = r.Recipient
	}
	s := a.source(string(r.Direction) + " " + src)
	switch {
	case s != nil && !s.lim.Allow():
	case a.node.Allow():
		return true
	default:
		s = &a.others
	}
	s.suppressed++
	s.last = Record{Time: r.Time, Direction: r.Direction, Sender: r.Sender, Recipient: r.Recipient}
	if !a.pending {
		a.pending = true
		time.AfterFunc(auditSummaryEvery, a.summarize)
	}
	return false
}

// source returns key's entry, making one; nil when the table is full of
// busy sources (swept at most once a second).
func (a *Log) source(key string) *auditSource {
	if s := a.sources[key]; s != nil {
		return s
	}
	if len(a.sources) >= maxAuditSources {
		if now := time.Now(); now.Sub(a.swept) >= time.Second {
			a.swept = now
			for k, s := range a.sources {
				if s.suppressed == 0 && s.lim.Tokens() >= auditSourceBurst {
					delete(a.sources, k)
				}
			}
		}
		if len(a.sources) >= maxAuditSources {
			return nil
		}
	}
	s := &auditSource{lim: rate.NewLimiter(rate.Every(auditSourceEvery), auditSourceBurst)}
	a.sources[key] = s
	return s
}

// summarize writes one line per source whose reject lines were suppressed
// since the last summary, the busiest first, and one for the rest.
func (a *Log) summarize() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pending = false
	var busy []*auditSource
	for _, s := range a.sources {
		if s.suppressed > 0 {
			busy = append(busy, s)
		}
	}
	slices.SortFunc(busy, func(x, y *auditSource) int { return cmp.Compare(y.suppressed, x.suppressed) })
	for i, s := range busy {
		if i < auditSummarySources {
			a.summary(s.last, fmt.Sprintf("%d rejections of this sender not logged one by one", s.suppressed))
		} else {
			a.others.suppressed += s.suppressed
			if s.last.Time.After(a.others.last.Time) {
				a.others.last.Time = s.last.Time
			}
		}
		s.suppressed = 0
	}
	if n := a.others.suppressed; n > 0 {
		a.summary(Record{Time: a.others.last.Time, Direction: In},
			fmt.Sprintf("%d rejections of other senders not logged one by one", n))
		a.others = auditSource{}
	}
}

func (a *Log) summary(r Record, detail string) {
	r.Kind, r.Decision, r.Reason, r.Detail = Summary, Reject, Suppressed, detail
	_ = a.enc.Encode(r)
}

// cleanRecord cleans and caps every string field of r.
func cleanRecord(r Record) Record {
	r.CorrelationID = cleanField(r.CorrelationID, auditCapShort)
	r.Direction = Direction(cleanField(string(r.Direction), auditCapShort))
	r.Kind = Kind(cleanField(string(r.Kind), auditCapShort))
	r.Decision = Decision(cleanField(string(r.Decision), auditCapShort))
	r.Sender = cleanField(r.Sender, auditCapField)
	r.Recipient = cleanField(r.Recipient, auditCapField)
	r.Action = cleanField(r.Action, auditCapField)
	r.Reason = cleanField(r.Reason, auditCapField)
	r.Detail = cleanField(r.Detail, auditCapDetail)
	return r
}

// cleanField returns s with every rune that is not graphic (controls,
// format runes such as bidi overrides, line separators, invalid UTF-8) as
// '?', in at most the given bytes once JSON-encoded (quotes aside): a
// longer s is cut at a rune and ends with "…(+N bytes)", N the bytes of s
// left out. It reads only about that many bytes of s.
func cleanField(s string, most int) string {
	if plain(s, most) {
		return s
	}
	keep := most - len("…(+ bytes)") - len(strconv.Itoa(len(s))) // room left by the longest marker
	var b strings.Builder
	n, cutB, cutS := 0, 0, 0 // JSON bytes so far; where to cut b and s for a marker
	i := 0
	for i < len(s) {
		r, w := utf8.DecodeRuneInString(s[i:])
		cost := w
		switch {
		case r == utf8.RuneError && w == 1, !unicode.IsGraphic(r):
			r, cost = '?', 1
		case r == '"', r == '\\':
			cost = 2
		}
		if n+cost > most {
			break
		}
		if n+cost <= keep {
			cutB, cutS = b.Len()+utf8.RuneLen(r), i+w
		}
		b.WriteRune(r)
		n += cost
		i += w
	}
	if i == len(s) || keep < 0 { // all of it, or no room for a marker
		return b.String()
	}
	return b.String()[:cutB] + "…(+" + strconv.Itoa(len(s)-cutS) + " bytes)"
}

// plain reports whether s is printable ASCII that JSON-encodes in at most
// the given bytes: the common case, kept as it is.
func plain(s string, most int) bool {
	if len(s) > most {
		return false
	}
	n := len(s)
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c >= 0x7f:
			return false
		case c == '"' || c == '\\':
			n++
		}
	}
	return n <= most
}
