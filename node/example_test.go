package node_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/trust"
)

// Two agents under one anchor: the worker serves read:logs, the
// orchestrator holds a token for it and calls it over TLS on loopback.
func Example() {
	ctx := context.Background()
	anchor, _ := trust.GenerateAnchorKey(rand.Reader)
	now := time.Now()

	start := func(name string) *node.Node {
		id, _ := trust.GenerateIdentity(rand.Reader)
		cred, _ := trust.IssueCredential(anchor, id.Public(), name, now, trust.DefaultCredentialTTL)
		cfg := node.LocalConfig()
		cfg.Identity, cfg.Credential = id, cred
		cfg.Policy = trust.DefaultPolicy(anchor.Public())
		n, err := node.New(cfg)
		if err != nil {
			panic(err)
		}
		if err := n.Start(ctx); err != nil {
			panic(err)
		}
		return n
	}
	worker, orch := start("worker"), start("orchestrator")
	defer worker.Close()
	defer orch.Close()

	_ = worker.Handle("read:logs", func(_ context.Context, r *node.Request) ([]byte, error) {
		return []byte("3 lines for " + string(r.Body)), nil
	})
	orchKey, _ := trust.PublicKeyFromPeerID(orch.ID())
	tok, _ := trust.IssueToken(anchor, orchKey, trust.Grant{Scopes: []string{"read:logs"}, Expires: now.Add(time.Hour)}, now)
	orch.AddToken(tok)

	ai, err := peer.AddrInfoFromString(worker.Addrs()[0].String())
	if err != nil {
		panic(err)
	}
	if err := orch.Join(ctx, *ai); err != nil {
		panic(err)
	}
	reply, err := orch.Call(ctx, worker.ID(), "read:logs", []byte("job-42"), nil)
	if err != nil {
		panic(err)
	}
	fmt.Println(string(reply.Body))

	// A call the token does not grant never reaches a handler.
	_, err = orch.Call(ctx, worker.ID(), "write:logs", nil, nil)
	fmt.Println(trust.CodeOf(err))
	// Output:
	// 3 lines for job-42
	// no_token
}
