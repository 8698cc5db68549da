package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// The audit log is rotated by size: past max bytes it is renamed PATH.1
// (PATH.1 to PATH.2, and so on; the oldest of auditLogKeep is dropped) and
// a new PATH is opened. So the log takes at most (auditLogKeep+1) × max
// bytes on disk, plus one line per file.
const (
	defaultAuditLogMaxBytes = 64 << 20
	auditLogKeep            = 3
)

// rotatingFile is an append-only file rotated by size. Each Write is one
// audit line: a line is never split across two files.
type rotatingFile struct {
	mu   sync.Mutex
	path string
	max  int64
	keep int
	f    *os.File
	size int64
	logw io.Writer // rotation failures, one line each
}

func openRotating(path string, max int64, keep int, logw io.Writer) (*rotatingFile, error) {
	r := &rotatingFile{path: path, max: max, keep: keep, logw: logw}
	if err := r.open(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *rotatingFile) open() error {
	f, err := os.OpenFile(r.path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	r.f, r.size = f, st.Size()
	return nil
}

func (r *rotatingFile) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return 0, os.ErrClosed
	}
	if r.size > 0 && r.size+int64(len(p)) > r.max {
		if err := r.rotate(); err != nil {
			fmt.Fprintf(r.logw, "meshagent: rotating the audit log: %v\n", err)
			if r.f == nil {
				return 0, err
			}
		}
	}
	n, err := r.f.Write(p)
	r.size += int64(n)
	return n, err
}

// rotate shifts PATH.i to PATH.i+1, PATH to PATH.1, and opens a new PATH.
// If a rename fails, it goes on writing to the file it has.
func (r *rotatingFile) rotate() error {
	for i := r.keep - 1; i >= 1; i-- {
		from := fmt.Sprintf("%s.%d", r.path, i)
		if err := os.Rename(from, fmt.Sprintf("%s.%d", r.path, i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if err := os.Rename(r.path, r.path+".1"); err != nil {
		return err
	}
	old := r.f
	r.f = nil
	err := r.open()
	if err != nil {
		r.f = old // renamed, but still written: nothing is lost
		return err
	}
	old.Close()
	return nil
}

func (r *rotatingFile) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return nil
	}
	err := r.f.Close()
	r.f = nil
	return err
}
