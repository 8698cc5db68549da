//go:build meshsim

package simulations

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Child is a helper process (an attacker, a benchmark's target) driven
// over its stdin and stdout, one line per command and per answer; its
// stderr goes to this process's.
type Child struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	// Lines are the child's stdout lines, closed when it ends.
	Lines <-chan string
}

// StartChild starts cmd as a Child.
func StartChild(cmd *exec.Cmd) (*Child, error) {
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		s := bufio.NewScanner(out)
		for s.Scan() {
			lines <- s.Text()
		}
	}()
	return &Child{cmd: cmd, in: in, Lines: lines}, nil
}

// Pid is the child's process ID.
func (c *Child) Pid() int { return c.cmd.Process.Pid }

// Send writes one command line.
func (c *Child) Send(line string) { _, _ = fmt.Fprintln(c.in, line) }

// Expect returns the fields after the next line that starts with word,
// or nil when the child ends or timeout passes first.
func (c *Child) Expect(word string, timeout time.Duration) []string {
	t := time.After(timeout)
	for {
		select {
		case l, ok := <-c.Lines:
			if !ok {
				return nil
			}
			if f := strings.Fields(l); len(f) > 0 && f[0] == word {
				return f[1:]
			}
		case <-t:
			return nil
		}
	}
}

// Stop closes the child's stdin (its cue to end), and kills it if it has
// not ended within grace. It returns the child's exit error.
func (c *Child) Stop(grace time.Duration) error {
	_ = c.in.Close()
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(grace):
		_ = c.cmd.Process.Kill()
		return <-done
	}
}

// Kill ends the child at once.
func (c *Child) Kill() {
	_ = c.cmd.Process.Kill()
	_ = c.cmd.Wait()
}
