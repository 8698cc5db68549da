//go:build meshsim

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/meshagent/trust"
)

// TestCARevokeNamesOneThing: `ca revoke --token` takes the link ID that
// `token inspect` prints and `--credential` the serial that `ca inspect`
// prints; each revocation revokes what it names and nothing else.
func TestCARevokeNamesOneThing(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	anchor := mustOK(t, "ca", "init", "--dir", ca)
	orch, sub := filepath.Join(dir, "orch"), filepath.Join(dir, "sub")
	orchID := mustOK(t, "init", "--home", orch, "--name", "orchestrator")
	subID := mustOK(t, "init", "--home", sub, "--name", "sub-agent")
	credFile := filepath.Join(sub, credentialFile)
	mustOK(t, "ca", "issue", "--dir", ca, "--agent", subID, "--name", "sub-agent", "--out", credFile)
	tok := filepath.Join(dir, "orch.token")
	mustOK(t, "token", "issue", "--ca", ca, "--to", orchID, "--scopes", "read:logs", "--delegatable", "read:logs", "--ttl", "1h", "--out", tok)
	del := filepath.Join(dir, "sub.token")
	mustOK(t, "token", "delegate", "--home", orch, "--token", tok, "--to", subID, "--scopes", "read:logs", "--out", del)

	var tinfo trust.TokenInfo
	if err := json.Unmarshal([]byte(mustOK(t, "token", "inspect", del)), &tinfo); err != nil {
		t.Fatal(err)
	}
	var cinfo trust.CredentialInfo
	if err := json.Unmarshal([]byte(mustOK(t, "ca", "inspect", credFile)), &cinfo); err != nil {
		t.Fatal(err)
	}
	if cinfo.Subject != subID || cinfo.Name != "sub-agent" || len(cinfo.Serial) != 32 {
		t.Fatalf("ca inspect: %+v", cinfo)
	}

	k, err := trust.ParsePublicKey(anchor)
	if err != nil {
		t.Fatal(err)
	}
	sk, _ := trust.ParsePublicKey(subID)
	cred := loadCredential(t, credFile)
	token := loadTokenFile(t, del)
	now := time.Now()
	verify := func(revFile string) (tokenErr, credErr error) {
		v, err := trust.NewVerifier(trust.DefaultPolicy(k))
		if err != nil {
			t.Fatal(err)
		}
		raw, err := readPEMFile(revFile, trust.PEMRevocation, trust.MaxRevocationSize)
		if err != nil {
			t.Fatal(err)
		}
		r, err := trust.ParseRevocation(raw)
		if err != nil {
			t.Fatal(err)
		}
		if err := v.AddRevocation(r, now); err != nil {
			t.Fatal(err)
		}
		return v.Authorize(token, sk, "read:logs", now), v.VerifyCredential(cred, now)
	}

	linkRev := filepath.Join(dir, "link.pem")
	mustOK(t, "ca", "revoke", "--dir", ca, "--token", tinfo.Links[1].ID, "--out", linkRev)
	terr, cerr := verify(linkRev)
	if trust.CodeOf(terr) != trust.CodeRevoked || cerr != nil {
		t.Fatalf("--token %s: token %v, credential %v; want the token revoked only", tinfo.Links[1].ID, terr, cerr)
	}

	credRev := filepath.Join(dir, "cred.pem")
	mustOK(t, "ca", "revoke", "--dir", ca, "--credential", cinfo.Serial, "--out", credRev)
	terr, cerr = verify(credRev)
	if terr != nil || trust.CodeOf(cerr) != trust.CodeRevoked {
		t.Fatalf("--credential %s: token %v, credential %v; want the credential revoked only", cinfo.Serial, terr, cerr)
	}

	// The serial given as a link ID, or a link ID as a serial, names
	// nothing that exists.
	for _, args := range [][]string{{"--token", cinfo.Serial}, {"--credential", tinfo.Links[1].ID}} {
		f := filepath.Join(dir, args[0][2:]+"-swapped.pem")
		mustOK(t, append([]string{"ca", "revoke", "--dir", ca, "--out", f}, args...)...)
		if terr, cerr := verify(f); terr != nil || cerr != nil {
			t.Fatalf("%v: token %v, credential %v; want neither revoked", args, terr, cerr)
		}
	}

	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"--token", tinfo.Links[1].ID, "--credential", cinfo.Serial}, 2},
		{[]string{"--credential", cinfo.Serial, "--agent", subID}, 2},
		{[]string{"--credential", "not-hex"}, 2},
		{[]string{"--credential", cinfo.Serial[:30]}, 2},
	} {
		r := cli(t, append([]string{"ca", "revoke", "--dir", ca, "--out", filepath.Join(dir, "x.pem")}, c.args...)...)
		if r.code != c.code || r.stderr == "" {
			t.Errorf("ca revoke %v: exit %d %q, want exit %d", c.args, r.code, r.stderr, c.code)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "x.pem")); err == nil {
		t.Fatal("a refused revoke left a file")
	}
	if r := cli(t, "ca", "inspect", del); r.code != 1 {
		t.Fatalf("ca inspect of a token: %+v", r)
	}
}

func loadCredential(t *testing.T, path string) *trust.Credential {
	t.Helper()
	b, err := readPEMFile(path, trust.PEMCredential, trust.MaxCredentialSize)
	if err != nil {
		t.Fatal(err)
	}
	c, err := trust.ParseCredential(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func loadTokenFile(t *testing.T, path string) *trust.Token {
	t.Helper()
	tok, err := loadToken(path)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestKeyDirectoryChecked: a key in a directory that others can write is
// refused with one line naming the command that fixes it.
func TestKeyDirectoryChecked(t *testing.T) {
	home := filepath.Join(t.TempDir(), "a")
	mustOK(t, "init", "--home", home, "--name", "a")
	if err := os.Chmod(home, 0o777); err != nil {
		t.Fatal(err)
	}
	r := cli(t, "id", "--home", home)
	if r.code != 1 || !strings.Contains(r.stderr, "run: chmod go-w "+home) || strings.Contains(r.stderr, "\n") {
		t.Fatalf("key in a world-writable directory: %+v", r)
	}
	if err := os.Chmod(home, 0o700); err != nil {
		t.Fatal(err)
	}
	mustOK(t, "id", "--home", home)
}

// TestAgentRevocationCoversRenewals: `ca revoke --agent` without --before
// revokes what is issued up to a week later too, so that a renewal an
// issuer serves before the revocation reaches it (a later not-before)
// does not escape it.
func TestAgentRevocationCoversRenewals(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	anchorID := mustOK(t, "ca", "init", "--dir", ca)
	subID := mustOK(t, "init", "--home", filepath.Join(dir, "sub"), "--name", "sub-agent")
	out := filepath.Join(dir, "revoke.pem")
	mustOK(t, "ca", "revoke", "--dir", ca, "--agent", subID, "--out", out)
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := trust.DecodePEM(data, trust.PEMRevocation)
	r, err := trust.ParseRevocation(raw)
	if err != nil {
		t.Fatal(err)
	}
	anchor, _ := trust.ParsePublicKey(anchorID)
	v, _ := trust.NewVerifier(trust.DefaultPolicy(anchor))
	now := time.Now()
	if err := v.AddRevocation(r, now); err != nil {
		t.Fatal(err)
	}
	a, err := trust.LoadAnchorKey(filepath.Join(ca, "anchor.key"))
	if err != nil {
		t.Fatal(err)
	}
	sub, _ := trust.ParsePublicKey(subID)
	renewed, _ := trust.IssueCredential(a, sub, "sub-agent", now.Add(time.Minute), time.Hour) // served a minute after the revocation
	if err := v.VerifyCredential(renewed, now.Add(2*time.Minute)); trust.CodeOf(err) != trust.CodeRevoked {
		t.Fatalf("a renewal served after the agent's revocation: %v, want revoked", err)
	}
}
