package main

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

func newAuditCmd() *cobra.Command {
	ac := &cobra.Command{Use: "audit", Short: "Check a daemon's audit log"}
	var key, home string
	var strict bool
	verify := &cobra.Command{
		Use:   "verify (--key PEERID | --home DIR) FILE...",
		Short: "Check the hash chain and the signed checkpoints of audit log files, oldest first",
		Long: `Check the hash chain and the signed checkpoints of audit log files.

Give the files in chain order, oldest first (audit.log.3 audit.log.2
audit.log.1 audit.log), and the daemon's ID (--key), or its home (--home) to
read the ID from its identity key. It reports the first line altered,
removed, inserted or out of order (file, line, reason) and exits 1; a
checkpoint signed by another key is refused too. Lines after the last
checkpoint are unsigned: it says how many, and a half-written last line (a
crash while it was written), and exits 0 unless --strict.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("%s takes at least one FILE", cmd.CommandPath())
			}
			return nil
		},
		RunE: action(func(cmd *cobra.Command, files []string) error {
			f := cmd.Flags()
			if f.Changed("key") == f.Changed("home") {
				return usagef("%s: give the daemon's ID with --key, or its home with --home", cmd.CommandPath())
			}
			var k trust.PublicKey
			if f.Changed("key") {
				var err error
				if k, err = trust.ParsePublicKey(key); err != nil {
					return usagef("--key: %v", err)
				}
			} else {
				id, err := trust.LoadIdentity(filepath.Join(home, identityFile))
				if err != nil {
					return err
				}
				k = id.Public()
			}
			rep, err := verifyAuditFiles(k, files)
			if err != nil {
				return err
			}
			rep.print(cmd.OutOrStdout(), k)
			if strict && len(rep.warnings) > 0 {
				return fmt.Errorf("--strict: %s", rep.warnings[0])
			}
			return nil
		}),
	}
	verify.Flags().StringVar(&key, "key", "", "the daemon's ID (peer ID) that signs the checkpoints")
	verify.Flags().StringVar(&home, "home", "", "the daemon's home: its ID is read from its identity key")
	verify.Flags().BoolVar(&strict, "strict", false, "exit 1 also for unsigned lines at the end, a half-written line, or no shutdown checkpoint")
	ac.AddCommand(verify)
	return ac
}

// chainError is the first thing wrong with a chain: where, and why.
type chainError struct {
	file   string
	line   int // in file, from 1
	reason string
}

func (e *chainError) Error() string { return fmt.Sprintf("%s:%d: %s", e.file, e.line, e.reason) }

// lineAt is a chain line read, and where.
type lineAt struct {
	file string
	line int
	seq  uint64
	hash chainHash
	why  string // a checkpoint's; "" for a record
}

// auditReport is what verifyAuditFiles found in a chain that holds.
type auditReport struct {
	files       []string // one line per file: its lines and seqs
	lines       int
	first, last lineAt
	checkpoints int
	lastCP      *lineAt
	unsigned    int      // lines after the last checkpoint
	notes       []string // what is so, and no fault
	warnings    []string // what the files cannot prove
}

func (r *auditReport) print(w io.Writer, k trust.PublicKey) {
	for _, f := range r.files {
		fmt.Fprintln(w, f)
	}
	for _, n := range r.notes {
		fmt.Fprintln(w, "note: "+n)
	}
	for _, n := range r.warnings {
		fmt.Fprintln(w, "warning: "+n)
	}
	if r.lines == 0 {
		fmt.Fprintln(w, "ok: no lines")
		return
	}
	fmt.Fprintf(w, "ok: seq %d to %d (%d lines), %d checkpoints signed by %s", r.first.seq, r.last.seq, r.lines, r.checkpoints, k)
	if c := r.lastCP; c != nil {
		fmt.Fprintf(w, "; the last at %s:%d (%s)", c.file, c.line, c.why)
	}
	fmt.Fprintln(w)
}

// verifyAuditFiles checks the chain through files, in order: every line's
// number and the hash of the line before it, and every checkpoint's
// signature by k. It returns the first fault as a *chainError (or an
// error reading a file); what the files cannot prove (unsigned lines at
// the end, a half-written line) is a warning in the report.
func verifyAuditFiles(k trust.PublicKey, files []string) (*auditReport, error) {
	r := &auditReport{}
	var prev *lineAt
	var startAt lineAt // where the unsigned lines began: after the last checkpoint
	for fi, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		br := bufio.NewReaderSize(f, maxChainLine)
		n, firstSeq := 0, uint64(0)
		fail := func(line int, format string, args ...any) error {
			return &chainError{file: name, line: line, reason: fmt.Sprintf(format, args...)}
		}
		for {
			raw, err := br.ReadSlice('\n')
			if errors.Is(err, bufio.ErrBufferFull) {
				f.Close()
				return nil, fail(n+1, "a line longer than %d bytes: not an audit log line", maxChainLine)
			}
			if err == io.EOF {
				if len(raw) > 0 {
					r.warnings = append(r.warnings, fmt.Sprintf("%s:%d: a half-written last line (%d bytes, no newline): not part of the chain (a crash while it was written)", name, n+1, len(raw)))
				}
				break
			}
			if err != nil {
				f.Close()
				return nil, err
			}
			n++
			line := raw[:len(raw)-1]
			l, err := parseChainLine(line)
			if err != nil {
				f.Close()
				return nil, fail(n, "not an audit chain line: %v", err)
			}
			cur := lineAt{file: name, line: n, seq: l.seq, hash: hashLine(line)}
			if n == 1 {
				firstSeq = l.seq
			}
			if prev == nil {
				if l.seq == 0 && l.prev != (chainHash{}) {
					f.Close()
					return nil, fail(n, "seq 0 names a line before it")
				}
				if l.seq != 0 {
					r.notes = append(r.notes, fmt.Sprintf("the chain starts at seq %d: earlier lines are not in the files given", l.seq))
				}
				r.first = cur
			} else if reason := linkFault(*prev, l, n == 1 && fi > 0, br); reason != "" {
				f.Close()
				if strings.HasPrefix(reason, "altered") {
					return nil, &chainError{file: prev.file, line: prev.line, reason: reason + fmt.Sprintf(" (%s:%d carries another hash of it)", name, n)}
				}
				return nil, fail(n, "%s", reason)
			}
			var kind struct {
				Kind string `json:"kind"`
			}
			_ = json.Unmarshal(line, &kind) // parseChainLine checked the JSON
			if kind.Kind == kindCheckpoint {
				var cp checkpointLine
				if err := json.Unmarshal(line, &cp); err != nil {
					f.Close()
					return nil, fail(n, "checkpoint: %v", err)
				}
				if reason := checkpointFault(k, l, cp); reason != "" {
					f.Close()
					return nil, fail(n, "checkpoint: %s", reason)
				}
				cur.why = cp.Why
				switch {
				case cp.Why != whyStart || prev == nil || prev.why == whyShutdown:
				case r.unsigned > 0:
					r.notes = append(r.notes, fmt.Sprintf("%s:%d: the daemon restarted without a shutdown checkpoint (a crash or a kill): the %d lines before (from %s:%d) were signed only then",
						name, n, r.unsigned, startAt.file, startAt.line))
				default:
					r.notes = append(r.notes, fmt.Sprintf("%s:%d: the daemon restarted without a shutdown checkpoint (a crash or a kill)", name, n))
				}
				r.checkpoints++
				at := cur
				r.lastCP, r.unsigned = &at, 0
			} else {
				if r.unsigned == 0 {
					startAt = cur
				}
				r.unsigned++
			}
			r.lines++
			r.last = cur
			prev = &cur
		}
		f.Close()
		if n == 0 {
			r.files = append(r.files, fmt.Sprintf("%s: no complete line", name))
		} else {
			r.files = append(r.files, fmt.Sprintf("%s: %d lines, seq %d to %d", name, n, firstSeq, r.last.seq))
		}
	}
	switch {
	case r.lines == 0:
	case r.checkpoints == 0:
		r.warnings = append(r.warnings, "no checkpoint: no line is signed")
	case r.unsigned > 0:
		r.warnings = append(r.warnings, fmt.Sprintf("%d lines after the last checkpoint (from %s:%d) are not signed: whoever can write the files could have altered or removed them without a trace",
			r.unsigned, startAt.file, startAt.line))
	case r.lastCP.why != whyShutdown:
		r.warnings = append(r.warnings, fmt.Sprintf("the last line is a %s checkpoint, not the daemon's shutdown checkpoint: the daemon is running or crashed, or lines after it were cut off", r.lastCP.why))
	}
	return r, nil
}

// lookahead is how many lines after a line out of sequence are read to
// tell lines out of order from lines removed.
const lookahead = 64

// linkFault says what is wrong with l coming after prev; "" when nothing
// is. newFile says l is the first line of a file after another; br reads
// the lines after l, to look ahead.
func linkFault(prev lineAt, l chainLine, newFile bool, br *bufio.Reader) string {
	want := prev.seq + 1
	switch {
	case l.seq == want && l.prev == prev.hash:
		return ""
	case l.seq == want:
		if newFile {
			return "altered, or the file after it is not this one: its hash does not match"
		}
		return "altered: its hash does not match"
	case l.seq == 0:
		return "a new chain starts here (seq 0): the lines before are not linked to it"
	case l.seq < want:
		return fmt.Sprintf("seq %d after seq %d: a line inserted, repeated or out of order", l.seq, prev.seq)
	}
	for range lookahead {
		raw, err := br.ReadSlice('\n')
		if err != nil {
			break
		}
		if later, err := parseChainLine(raw[:len(raw)-1]); err == nil && later.seq == want {
			return fmt.Sprintf("seq %d where %d was expected, and %d comes later: lines out of order", l.seq, want, want)
		}
	}
	if newFile {
		return fmt.Sprintf("seq %d after %d at the end of %s: %d lines missing between the two files (a file missing from the rotation set?)", l.seq, prev.seq, prev.file, l.seq-want)
	}
	return fmt.Sprintf("seq %d after %d: %d lines removed before this one", l.seq, prev.seq, l.seq-want)
}

// checkpointFault says what is wrong with checkpoint cp on line l, signed
// (it says) by cp.Signer; "" when it is signed by k.
func checkpointFault(k trust.PublicKey, l chainLine, cp checkpointLine) string {
	signer, err := trust.ParsePublicKey(cp.Signer)
	if err != nil {
		return fmt.Sprintf("signer: %v", err)
	}
	if !signer.Equal(k) {
		return fmt.Sprintf("signed by %s, not by %s: a forged checkpoint, or another daemon's log", signer, k)
	}
	sig, err := base64.StdEncoding.Strict().DecodeString(cp.Sig)
	if err != nil {
		return "sig is not base64"
	}
	if !k.Verify(wire.DomainAuditCheckpoint, checkpointMessage(l.prev, l.seq, cp.Time, cp.Why), sig) {
		return "bad signature: the checkpoint was altered or forged, or lines before it were rewritten"
	}
	return ""
}
