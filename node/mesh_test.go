//go:build meshsim

package node_test

import (
	"context"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/simulations"
)

// meshSpec says what workerMesh starts besides orchestrator and worker.
type meshSpec struct {
	opts   simulations.Options
	others []string // more agents, enrolled with no rights
	audit  io.Writer
	// scopes and delegatable are the orchestrator's token (read:logs by
	// default); warm makes one call succeed before the test starts.
	scopes, delegatable []string
	warm                bool
}

// workerMesh starts orchestrator (with a token for spec.scopes), worker
// (serving read:logs, echoing the body and counting its runs; its audit
// log to spec.audit) and spec.others, all connected: the one mesh the
// node tests share.
func workerMesh(t testing.TB, spec meshSpec) (*simulations.Mesh, *atomic.Int32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	opts := spec.opts
	if spec.audit != nil {
		configure := opts.Configure
		opts.Configure = func(name string, c *node.Config) {
			if name == "worker" {
				c.Audit = spec.audit
			}
			if configure != nil {
				configure(name, c)
			}
		}
	}
	m, err := simulations.NewMesh(ctx, append([]string{"orchestrator", "worker"}, spec.others...), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	if err := m.ConnectAll(ctx); err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int32
	if err := m.Agents["worker"].Node.Handle("read:logs", func(_ context.Context, r *node.Request) ([]byte, error) {
		runs.Add(1)
		return append([]byte("logs for "), r.Body...), nil
	}); err != nil {
		t.Fatal(err)
	}
	scopes := spec.scopes
	if scopes == nil {
		scopes = []string{"read:logs"}
	}
	if _, err := m.Grant("orchestrator", scopes, spec.delegatable, time.Hour); err != nil {
		t.Fatal(err)
	}
	if spec.warm {
		if err := simulations.WaitFor(10*time.Second, func() error { _, err := call(m, "orchestrator", "worker", "read:logs"); return err }); err != nil {
			t.Fatal(err)
		}
		runs.Store(0)
	}
	return m, &runs
}

// testMesh starts orchestrator, worker (serving read:logs, counting runs)
// and mallory (enrolled, no rights), over the given transport.
func testMesh(t testing.TB, transport string) (*simulations.Mesh, *atomic.Int32) {
	return workerMesh(t, meshSpec{opts: simulations.Options{Transport: transport}, others: []string{"mallory"},
		scopes: []string{"read:logs", "write:reports"}, delegatable: []string{"read:logs"}})
}

// auditMesh is testMesh over TCP with the worker's audit log counted, and
// one honest call made.
func auditMesh(t *testing.T) (*simulations.Mesh, *auditCounter) {
	log := newAuditCounter()
	m, _ := workerMesh(t, meshSpec{others: []string{"mallory"}, audit: log, warm: true})
	return m, log
}

// blameMesh starts orchestrator (the caller, with a token for read:logs),
// worker (serving read:logs, counting its runs) and the other names, all
// connected, after one honest call.
func blameMesh(t *testing.T, opts simulations.Options, names ...string) (*simulations.Mesh, *atomic.Int32) {
	return workerMesh(t, meshSpec{opts: opts, others: names, warm: true})
}
