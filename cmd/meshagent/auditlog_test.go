package main

import (
	"crypto/rand"
	"io"
	"testing"
	"time"

	"github.com/meshagent/meshagent/trust"
)

// testChainOptions are the audit chain options of a test: max bytes a
// file, a fresh identity, checkpoints every 5 lines (or 10 s).
func testChainOptions(max int64, logw io.Writer) chainOptions {
	id, err := trust.GenerateIdentity(rand.Reader)
	if err != nil {
		panic(err)
	}
	return chainOptions{max: max, keep: auditLogKeep, id: id, every: 10 * time.Second, lines: 5, logw: logw}
}

var _ = testing.Short
