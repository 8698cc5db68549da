//go:build meshsim

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/meshagent/simulations"
)

func TestHandleAndPubSubThroughTheCLI(t *testing.T) {
	a, b, aID, bID := pair(t)

	// bob serves read:logs with a shell command: body on stdin, reply on stdout.
	done := background(t, "handle", "--home", b, "--action", "read:logs", "--count", "1", "--",
		"sh", "-c", `printf '{"echo":'; cat; printf '}'`)
	var reply string
	if err := simulations.WaitFor(10*time.Second, func() error {
		r := cli(t, "send", "--home", a, "--to", bID, "--action", "read:logs", "--body", `{"n":7}`)
		if r.code != 0 {
			return errors.New(r.stderr)
		}
		reply = r.stdout
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(reply, `"echo":{"n":7}`) {
		t.Fatalf("reply %s", reply)
	}
	if r := done(); r.code != 0 {
		t.Fatalf("handle: %+v", r)
	}

	// alice subscribes; bob publishes until the mesh has formed and delivers.
	sub := background(t, "subscribe", "--home", a, "--topic", "tasks", "--count", "1")
	okc := make(chan result, 1)
	go func() { okc <- sub() }()
	var got result
	deadline := time.After(15 * time.Second)
	for got.stdout == "" {
		select {
		case got = <-okc:
		case <-time.After(200 * time.Millisecond):
			cli(t, "publish", "--home", b, "--topic", "tasks", "--action", "publish:tasks", "--body", `{"job":1}`)
		case <-deadline:
			t.Fatal("no message delivered")
		}
	}
	var msg struct {
		From string          `json:"from"`
		Body json.RawMessage `json:"body"`
	}
	if err := json.Unmarshal([]byte(got.stdout), &msg); err != nil || msg.From != bID || string(msg.Body) != `{"job":1}` {
		t.Fatalf("subscribe printed %q (%v)", got.stdout, err)
	}
	// Publishing without a token for the action is refused locally.
	if r := cli(t, "publish", "--home", b, "--topic", "tasks", "--action", "read:logs"); r.code != 1 {
		t.Fatalf("publish without a token: %+v", r)
	}

	var tokens []struct {
		Holder string `json:"holder"`
	}
	if err := json.Unmarshal([]byte(mustOK(t, "tokens", "--home", a)), &tokens); err != nil || len(tokens) != 1 || tokens[0].Holder != aID {
		t.Fatalf("tokens: %+v %v", tokens, err)
	}
}

func TestPythonExampleAgent(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	a, b, _, bID := pair(t)
	script := filepath.Join("..", "..", "examples", "python", "agent.py")
	serve := exec.Command(py, script, "serve", "--home", b, "--action", "read:logs", "--count", "2")
	var serveErr bytes.Buffer
	serve.Stderr = &serveErr
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	defer serve.Process.Kill()
	// Wait until the Python handler is registered (the first call that
	// succeeds is served by it).
	if err := simulations.WaitFor(15*time.Second, func() error {
		r := cli(t, "send", "--home", a, "--to", bID, "--action", "read:logs")
		if r.code != 0 {
			return errors.New(r.stderr)
		}
		return nil
	}); err != nil {
		t.Fatalf("%v; python: %s", err, serveErr.String())
	}
	out, err := exec.Command(py, script, "call", "--home", a, "--to", bID, "--action", "read:logs").CombinedOutput()
	if err != nil {
		t.Fatalf("python call: %v: %s", err, out)
	}
	var rep struct {
		From string `json:"from"`
		Body struct {
			ServedBy string   `json:"served_by"`
			Lines    []string `json:"lines"`
		} `json:"body"`
	}
	if err := json.Unmarshal(out, &rep); err != nil || rep.From != bID || rep.Body.ServedBy != "bob" || len(rep.Body.Lines) != 2 {
		t.Fatalf("python call printed %s (%v)", out, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	waitErr := make(chan error, 1)
	go func() { waitErr <- serve.Wait() }()
	select {
	case err := <-waitErr:
		if err != nil {
			t.Fatalf("python serve: %v: %s", err, serveErr.String())
		}
	case <-ctx.Done():
		t.Fatal("python serve did not exit after two requests")
	}
	// A rejected call exits 1 with the reason code.
	r, _ := exec.Command(py, script, "call", "--home", b, "--to", bID, "--action", "read:logs").CombinedOutput()
	if !strings.Contains(string(r), "rejected") {
		t.Fatalf("python rejected call printed %s", r)
	}
}

func TestDaemonRestartKeepsIdentity(t *testing.T) {
	_, anchor, a, aID := enrolled(t)
	fc := daemonConfig("alice", anchor)
	for i := 0; i < 2; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		logw := daemonLog(t, a)
		go func() { done <- serveDaemon(ctx, a, fc, nil, logw) }()
		if err := simulations.WaitFor(10*time.Second, func() error {
			r := cli(t, "status", "--home", a)
			if r.code != 0 {
				return errors.New(r.stderr)
			}
			if !strings.Contains(r.stdout, aID) {
				t.Fatalf("restart %d: status %s lacks %s", i, r.stdout, aID)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(a, "api.sock")); err == nil {
			t.Fatal("socket left behind after a clean stop")
		}
	}
	if got := mustOK(t, "id", "--home", a); got != aID {
		t.Fatalf("identity changed: %s", got)
	}
}
