//go:build meshsim

package main

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/trust"
)

// Two daemons: bob is an issuer; alice's credential lives 4 s, so she
// renews it from bob after about 2.7 s and writes it to disk. A revocation
// applied through alice's CLI reaches bob and is persisted by both.
func TestDaemonRenewalAndRevocation(t *testing.T) {
	m := newTestMesh(t)
	dir, ca := m.dir, m.ca
	a, _, fa := m.agent("alice", "ping:agent", "--ttl", "4s")
	b, bID, fb := m.agent("bob", "")
	before, _ := os.ReadFile(filepath.Join(a, credentialFile))

	fb.Heartbeat, fb.DeadAfter, fb.IssuerKey = 100*time.Millisecond, 2*time.Second, filepath.Join(ca, anchorKeyFile)
	fa.Heartbeat, fa.DeadAfter = 100*time.Millisecond, 2*time.Second
	m.start(a, fa, m.start(b, fb))

	if err := simulations.WaitFor(10*time.Second, func() error {
		now, _ := os.ReadFile(filepath.Join(a, credentialFile))
		if string(now) == string(before) {
			return errors.New("credential not renewed yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(filepath.Join(a, credentialFile))
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("renewed credential mode %o", st.Mode().Perm())
	}
	// Past the first credential's expiry (plus the 30 s skew is not needed:
	// the new one is simply valid), alice still calls bob.
	mustOK(t, "send", "--home", a, "--to", bID, "--action", "ping:agent")
	var status struct {
		Credential struct {
			Warning string `json:"warning"`
		} `json:"credential"`
	}
	_ = json.Unmarshal([]byte(mustOK(t, "status", "--home", a)), &status)
	if status.Credential.Warning != "" {
		t.Fatalf("warning after renewal: %q", status.Credential.Warning)
	}

	// Revoke alice's token link; bob learns it through the mesh.
	var info struct {
		Links []struct {
			ID string `json:"id"`
		} `json:"links"`
	}
	_ = json.Unmarshal([]byte(mustOK(t, "token", "inspect", filepath.Join(a, testTokenFile))), &info)
	rev := filepath.Join(dir, "rev.pem")
	mustOK(t, "ca", "revoke", "--dir", ca, "--token", info.Links[0].ID, "--out", rev)
	mustOK(t, "revoke", "--home", a, rev)
	if err := simulations.WaitFor(5*time.Second, func() error {
		entries, _ := os.ReadDir(filepath.Join(b, "revocations"))
		if len(entries) != 1 {
			return errors.New("bob has not persisted the revocation")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	r := cli(t, "send", "--home", a, "--to", bID, "--action", "ping:agent")
	if r.code != 1 || !strings.Contains(r.stderr, "no_token") && !strings.Contains(r.stderr, string(trust.CodeRevoked)) {
		t.Fatalf("call with a revoked token: %+v", r)
	}
	// A forged revocation file is refused with its reason.
	bad := filepath.Join(dir, "bad.pem")
	os.WriteFile(bad, trust.EncodePEM([]byte("garbage"), trust.PEMRevocation), 0o600)
	if r := cli(t, "revoke", "--home", a, bad); r.code != 1 {
		t.Fatalf("garbage revocation: %+v", r)
	}
}
