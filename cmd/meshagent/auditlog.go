package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

// The audit log is a hash chain. Every line starts with its number in the
// chain and the hash of the line before it:
//
//	{"seq":41,"prev":"<64 hex>",...the record's JSON fields...}
//
// The hash of a line is SHA-256(wire.DomainAuditLine || the line's bytes
// as written, without its newline), so a verifier hashes what it reads and
// never re-encodes. The first line of a chain (seq 0) has prev all zeros
// (genesis); the first line of a rotated file carries the hash of the last
// line of the file before, so the chain runs on across files and restarts.
//
// Checkpoints are lines of kind "checkpoint", signed with the daemon's
// identity key over wire.DomainAuditCheckpoint || prev || seq || time ||
// why (checkpointMessage): prev is the chain head, and seq the number of
// lines before the checkpoint. The daemon writes one at start, every
// checkpointEvery or checkpointLines lines (whichever comes first), as the
// last line of a file it rotates or reopens, and at shutdown. Lines after
// the last checkpoint are unsigned: whoever can write the file can rewrite
// them undetected; everything before it only with the identity key.
//
// The log is rotated by size: past max bytes it is renamed PATH.1 (PATH.1
// to PATH.2, and so on; the oldest of auditLogKeep is dropped) and a new
// PATH is opened. So the log takes at most (auditLogKeep+1) × max bytes on
// disk, plus one line per file. On SIGHUP it reopens PATH (logrotate's
// create mode: move the file, then signal).
const (
	defaultAuditLogMaxBytes = 64 << 20
	auditLogKeep            = 3

	defaultCheckpointEvery = time.Minute
	defaultCheckpointLines = 1000

	// maxChainLine bounds a line the verifier reads and the writer takes:
	// the node's lines are at most 1536 bytes, checkpoints about 250.
	maxChainLine = 64 << 10
	// checkpointRoom is what a checkpoint line takes at most: a file
	// rotated by size keeps room for the one that ends it.
	checkpointRoom = 512
)

// kindCheckpoint is the kind of a checkpoint line.
const kindCheckpoint = "checkpoint"

// Why a checkpoint was written.
const (
	whyStart    = "start"    // the first line of a run
	whyInterval = "interval" // checkpointEvery passed or checkpointLines were written
	whyRotate   = "rotate"   // the last line of a file rotated by size
	whyReopen   = "reopen"   // the last line of a file before SIGHUP's reopen
	whyShutdown = "shutdown" // the last line of a run
)

const chainLinePrefix = `{"seq":`

// chainHash is the hash of one line, as the next line's prev holds it.
type chainHash [sha256.Size]byte

// hashLine is the chain hash of line (without its newline).
func hashLine(line []byte) chainHash {
	h := sha256.New()
	h.Write([]byte(wire.DomainAuditLine))
	h.Write(line)
	var out chainHash
	h.Sum(out[:0])
	return out
}

// appendChainPrefix appends the start of line seq, after prev, to b.
func appendChainPrefix(b []byte, seq uint64, prev chainHash) []byte {
	b = append(b, chainLinePrefix...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"prev":"`...)
	b = hex.AppendEncode(b, prev[:])
	return append(b, '"')
}

// chainLine is what the chain needs of a line: its number, the hash it
// carries, and where the fields of its record start.
type chainLine struct {
	seq  uint64
	prev chainHash
	rest []byte // after the prefix: `,"field":...}` or `}`
}

// parseChainLine parses a line of the audit log (without its newline). It
// reads the prefix strictly, as the writer wrote it (no spaces, lowercase
// hex, no leading zeros), and requires the whole line to be one JSON
// object.
func parseChainLine(line []byte) (chainLine, error) {
	var l chainLine
	rest, ok := bytes.CutPrefix(line, []byte(chainLinePrefix))
	if !ok {
		return l, errors.New(`does not start with {"seq"`)
	}
	i := 0
	for i < len(rest) && i <= 20 && rest[i] >= '0' && rest[i] <= '9' {
		i++
	}
	if i == 0 || (i > 1 && rest[0] == '0') {
		return l, errors.New("seq is not a number")
	}
	seq, err := strconv.ParseUint(string(rest[:i]), 10, 64)
	if err != nil {
		return l, errors.New("seq is out of range")
	}
	rest, ok = bytes.CutPrefix(rest[i:], []byte(`,"prev":"`))
	if !ok || len(rest) < 2*len(l.prev)+1 || rest[2*len(l.prev)] != '"' {
		return l, errors.New("no prev hash after seq")
	}
	for _, c := range rest[:2*len(l.prev)] {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return l, errors.New("prev is not 64 lowercase hex digits")
		}
	}
	_, _ = hex.Decode(l.prev[:], rest[:2*len(l.prev)])
	rest = rest[2*len(l.prev)+1:]
	if len(rest) == 0 || (rest[0] != ',' && rest[0] != '}') || !json.Valid(line) {
		return l, errors.New("not a JSON object")
	}
	l.seq, l.rest = seq, rest
	return l, nil
}

// checkpointLine is a checkpoint's fields besides seq and prev.
type checkpointLine struct {
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"`
	Why    string    `json:"why"`
	Signer string    `json:"signer"`
	Sig    string    `json:"sig"`
}

// checkpointMessage is what a checkpoint's signature covers, after
// wire.DomainAuditCheckpoint: the chain head, the line count, the time
// (Unix nanoseconds) and why, in fixed-size fields but the last.
func checkpointMessage(prev chainHash, seq uint64, t time.Time, why string) []byte {
	b := make([]byte, 0, len(prev)+16+len(why))
	b = append(b, prev[:]...)
	b = binary.BigEndian.AppendUint64(b, seq)
	b = binary.BigEndian.AppendUint64(b, uint64(t.UnixNano()))
	return append(b, why...)
}

// appendCheckpoint appends checkpoint line seq (without its newline),
// signed by id, to b.
func appendCheckpoint(b []byte, id *trust.Identity, seq uint64, prev chainHash, t time.Time, why string) []byte {
	t = t.UTC().Round(0)
	sig := id.Sign(wire.DomainAuditCheckpoint, checkpointMessage(prev, seq, t, why))
	b = appendChainPrefix(b, seq, prev)
	b = append(b, `,"time":"`...)
	b = t.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","kind":"`+kindCheckpoint+`","why":"`...)
	b = append(b, why...)
	b = append(b, `","signer":"`...)
	b = append(b, id.Public().String()...)
	b = append(b, `","sig":"`...)
	b = base64.StdEncoding.AppendEncode(b, sig)
	return append(b, `"}`...)
}

// chainOptions is how the daemon writes its audit log.
type chainOptions struct {
	max   int64 // rotate past this many bytes
	keep  int   // rotated files kept
	id    *trust.Identity
	every time.Duration // checkpoint at least this often while lines come
	lines int           // and at least every this many lines
	logw  io.Writer     // rotation and write failures, one line each
}

// auditChain is the daemon's audit log: an append-only hash chain in a
// file rotated by size. Each Write is one record line, written with one
// write(2) (with the checkpoint it triggers, if any) before Write returns,
// so a record is in the OS before the node sends the reply it audits, and
// a crash of the process loses nothing written. A line is never split
// across two files.
type auditChain struct {
	opts chainOptions
	path string
	stop chan struct{} // closed by Close: the checkpoint ticker ends
	done chan struct{} // closed when it has

	mu     sync.Mutex
	f      *os.File // nil once closed
	size   int64
	seq    uint64    // of the next line
	head   chainHash // hash of the last line written (zero: genesis)
	since  int       // lines since the last checkpoint
	broken bool      // a failed write left part of a line in f
	failed bool      // the last write failed (said once on logw)
	buf    []byte
}

// openAuditChain opens the audit log at path and continues its chain: from
// the last line of path, or of path.1 when path is empty or absent, or
// from genesis. A file that ends in part of a line (a crash while it was
// written) or in something that is no chain line is rotated away first,
// untouched. It then writes a start checkpoint.
func openAuditChain(path string, opts chainOptions) (*auditChain, error) {
	c := &auditChain{opts: opts, path: path, stop: make(chan struct{}), done: make(chan struct{})}
	tip, err := readTip(path)
	if err != nil {
		return nil, err
	}
	switch {
	case tip.empty:
		if tip, err = readTip(path + ".1"); err != nil {
			return nil, err
		}
	case !tip.ok || tip.partial:
		if err := c.shift(); err != nil {
			return nil, err
		}
		if tip.ok {
			fmt.Fprintf(opts.logw, "meshagent: audit log: %s ends in a half-written line: moved to %s.1, the chain goes on in a new file\n", path, path)
		} else {
			fmt.Fprintf(opts.logw, "meshagent: audit log: %s does not end in a chain line (%v): moved to %s.1, a new chain starts\n", path, tip.err, path)
		}
	}
	if tip.ok { // else genesis
		c.seq, c.head = tip.seq+1, tip.hash
	}
	if err := c.open(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	err = c.checkpoint(whyStart)
	c.mu.Unlock()
	if err != nil {
		c.f.Close()
		return nil, err
	}
	go c.ticker()
	return c, nil
}

// chainTip is the last line of a file.
type chainTip struct {
	empty   bool // no file, or no byte in it
	ok      bool // its last complete line is a chain line
	partial bool // bytes after the last newline
	seq     uint64
	hash    chainHash
	err     error // why not ok
}

// readTip reads the last complete line of the file at path.
func readTip(path string) (chainTip, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return chainTip{empty: true}, nil
	}
	if err != nil {
		return chainTip{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return chainTip{}, err
	}
	if st.Size() == 0 {
		return chainTip{empty: true}, nil
	}
	off := max(st.Size()-2*maxChainLine, 0)
	data := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(data, off); err != nil {
		return chainTip{}, err
	}
	var tip chainTip
	end := bytes.LastIndexByte(data, '\n')
	tip.partial = end != len(data)-1
	if end < 0 {
		tip.err = errors.New("no complete line")
		return tip, nil
	}
	line := data[bytes.LastIndexByte(data[:end], '\n')+1 : end]
	l, err := parseChainLine(line)
	if err != nil {
		tip.err = err
		return tip, nil
	}
	tip.ok, tip.seq, tip.hash = true, l.seq, hashLine(line)
	return tip, nil
}

func (c *auditChain) open() error {
	f, err := os.OpenFile(c.path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	c.f, c.size, c.broken = f, st.Size(), false
	return nil
}

// Write appends p, one JSON object and a newline as the node's audit log
// encodes each record, to the chain. It returns once the line is written.
func (c *auditChain) Write(p []byte) (int, error) {
	rec, ok := bytes.CutSuffix(p, []byte("\n"))
	if !ok || len(rec) < 2 || rec[0] != '{' || (rec[1] != '"' && string(rec) != "{}") || bytes.IndexByte(rec, '\n') >= 0 || len(rec) > maxChainLine-200 || !json.Valid(rec) {
		return 0, errors.New("audit log: a record must be one JSON object on one line")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.f == nil {
		return 0, os.ErrClosed
	}
	need := int64(len(rec)) + 100 + checkpointRoom
	if c.broken || (c.size > 0 && c.size+need > c.opts.max) {
		if err := c.rotate(); err != nil {
			fmt.Fprintf(c.opts.logw, "meshagent: rotating the audit log: %v\n", err)
			if c.f == nil {
				return 0, err
			}
		}
	}
	b := appendChainPrefix(c.buf[:0], c.seq, c.head)
	if rec[1] == '"' {
		b = append(b, ',')
	}
	b = append(b, rec[1:]...)
	head := hashLine(b)
	b = append(b, '\n')
	n, cp := 1, false
	if c.since+1 >= c.opts.lines {
		// The checkpoint goes out with the line, in the same write.
		start := len(b)
		b = appendCheckpoint(b, c.opts.id, c.seq+1, head, time.Now(), whyInterval)
		head = hashLine(b[start:])
		b = append(b, '\n')
		n, cp = 2, true
	}
	err := c.append(b, n, head, cp)
	c.buf = b[:0]
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// append writes b, n whole lines, with one write(2), and moves the chain
// on past them: head is the hash of the last, cp says whether that one is
// a checkpoint. On a failure the chain stays where it was, and so does f
// if it can be cut back.
func (c *auditChain) append(b []byte, n int, head chainHash, cp bool) error {
	w, err := c.f.Write(b)
	if err != nil {
		if w > 0 && c.f.Truncate(c.size) != nil {
			c.broken = true // the next write starts a new file
		}
		if !c.failed {
			c.failed = true
			fmt.Fprintf(c.opts.logw, "meshagent: writing the audit log: %v\n", err)
		}
		return err
	}
	c.failed = false
	c.size += int64(w)
	c.seq += uint64(n)
	c.head = head
	if cp {
		c.since = 0
	} else {
		c.since += n
	}
	return nil
}

// checkpoint writes a checkpoint line, why it is written.
func (c *auditChain) checkpoint(why string) error {
	b := appendCheckpoint(c.buf[:0], c.opts.id, c.seq, c.head, time.Now(), why)
	head := hashLine(b)
	b = append(b, '\n')
	err := c.append(b, 1, head, true)
	c.buf = b[:0]
	return err
}

// ticker writes a checkpoint every opts.every while lines come, until
// Close.
func (c *auditChain) ticker() {
	defer close(c.done)
	t := time.NewTicker(c.opts.every)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			c.mu.Lock()
			if c.f != nil && c.since > 0 {
				_ = c.checkpoint(whyInterval) // a failure is said by append
			}
			c.mu.Unlock()
		}
	}
}

// rotate ends the file with a checkpoint, shifts PATH.i to PATH.i+1 and
// PATH to PATH.1, and opens a new PATH. If a rename fails, it goes on
// writing to the file it has.
func (c *auditChain) rotate() error {
	if !c.broken && c.since > 0 {
		_ = c.checkpoint(whyRotate) // a failure is said by append
	}
	if err := c.shift(); err != nil {
		return err
	}
	old := c.f
	c.f = nil
	if err := c.open(); err != nil {
		c.f = old // renamed, but still written: nothing is lost
		return err
	}
	old.Close()
	return nil
}

// shift renames PATH.i to PATH.i+1 and PATH to PATH.1; the oldest is
// overwritten.
func (c *auditChain) shift() error {
	for i := c.opts.keep - 1; i >= 1; i-- {
		from := fmt.Sprintf("%s.%d", c.path, i)
		if err := os.Rename(from, fmt.Sprintf("%s.%d", c.path, i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return os.Rename(c.path, c.path+".1")
}

// Reopen ends the file it writes with a checkpoint and opens PATH again:
// after logrotate moved the file away, a new one (SIGHUP), which it starts
// with a checkpoint.
func (c *auditChain) Reopen() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.f == nil {
		return os.ErrClosed
	}
	if c.broken {
		return c.rotate() // never append to part of a line
	}
	if c.since > 0 {
		_ = c.checkpoint(whyReopen)
	}
	old := c.f
	if err := c.open(); err != nil {
		c.f = old
		return err
	}
	old.Close()
	if c.size == 0 {
		// A new file starts with the chain's head, so that a restart
		// before its first record finds where the chain is.
		_ = c.checkpoint(whyReopen)
	}
	return nil
}

// Close writes the shutdown checkpoint and closes the file. It is
// idempotent.
func (c *auditChain) Close() error {
	c.mu.Lock()
	if c.f == nil {
		c.mu.Unlock()
		return nil
	}
	err := c.checkpoint(whyShutdown)
	if cerr := c.f.Close(); err == nil {
		err = cerr
	}
	c.f = nil
	c.mu.Unlock()
	close(c.stop)
	<-c.done
	return err
}

// reopenOnHangup reopens the audit log a (if any) on each SIGHUP until
// ctx ends; a failure is said on logw. A daemon without an audit log
// ignores SIGHUP.
func reopenOnHangup(ctx context.Context, a *auditChain, logw io.Writer) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				if a == nil {
					continue
				}
				if err := a.Reopen(); err != nil && !errors.Is(err, os.ErrClosed) {
					fmt.Fprintf(logw, "meshagent: reopening the audit log: %v\n", err)
				}
			}
		}
	}()
}
