package simulations

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/trust"
)

// AttackerEnv, when set in a process's environment, names the spec file of
// an attacker that SeparateAttackScenario started: such a process runs the
// attack (RunAttacker) instead of its main job.
const AttackerEnv = "MESHAGENT_ATTACKER"

// attackerSpec is what SeparateAttackScenario hands to the attacker
// process. The identity is in identity.pem next to it (0600).
type attackerSpec struct {
	Anchor     string        `json:"anchor"`
	Credential []byte        `json:"credential"`
	Token      []byte        `json:"token"`  // its own read:metrics token
	Stolen     []byte        `json:"stolen"` // an honest caller's token
	Replayed   []byte        `json:"replayed"`
	Target     string        `json:"target"` // multiaddr ending in /p2p/ID
	For        time.Duration `json:"for"`
}

// RunAttacker runs the attack named by AttackerEnv, if it is set, and
// reports whether it did. A program that calls SeparateAttackScenario must
// call it first thing in main and exit when it returns true: the scenario
// starts the program itself again as the attacker.
func RunAttacker() bool {
	path := os.Getenv(AttackerEnv)
	if path == "" {
		return false
	}
	if err := runAttacker(path); err != nil {
		fmt.Fprintln(os.Stderr, "attacker:", err)
		os.Exit(1)
	}
	return true
}

func runAttacker(path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var spec attackerSpec
	if err := json.Unmarshal(raw, &spec); err != nil {
		return err
	}
	id, err := trust.LoadIdentity(filepath.Join(filepath.Dir(path), "identity.pem"))
	if err != nil {
		return err
	}
	anchor, err := trust.ParsePublicKey(spec.Anchor)
	if err != nil {
		return err
	}
	cred, err := trust.ParseCredential(spec.Credential)
	if err != nil {
		return err
	}
	own, err := trust.ParseToken(spec.Token, 1<<16)
	if err != nil {
		return err
	}
	stolen, err := trust.ParseToken(spec.Stolen, 1<<16)
	if err != nil {
		return err
	}
	target, err := peer.AddrInfoFromString(spec.Target)
	if err != nil {
		return err
	}
	cfg := node.LocalConfig()
	cfg.Identity, cfg.Credential = id, cred
	cfg.Policy = trust.DefaultPolicy(anchor)
	cfg.Tokens = []*trust.Token{own}
	cfg.HeartbeatInterval, cfg.DeadAfter = 500*time.Millisecond, 5*time.Second
	ctx := context.Background()
	n, err := node.New(cfg)
	if err != nil {
		return err
	}
	if err := n.Start(ctx); err != nil {
		return err
	}
	defer n.Close()
	if err := n.Connect(ctx, *target); err != nil {
		return err
	}
	fmt.Println("ready")
	stop := make(chan struct{})
	time.AfterFunc(spec.For, func() { close(stop) })
	var attempts atomic.Int64
	flood(ctx, n, id, target.ID, stolen, spec.Replayed, stop, &attempts)
	fmt.Println("attempts", attempts.Load())
	return nil
}

// SeparateAttackScenario is AttackScenario with the attacker in a process
// of its own, started from this program's executable at the lowest CPU
// priority (nice 19), as an attacker on another machine would be: the
// honest agents' process keeps the cores, and what the target spends on
// the attack is all that the measurement counts. The program must call
// RunAttacker first in main.
func SeparateAttackScenario(ctx context.Context, n int, d time.Duration) (AttackResult, error) {
	res := AttackResult{N: n}
	st, err := newAttackStage(ctx, n, nil)
	if err != nil {
		return res, err
	}
	defer st.m.Close()
	m := st.m
	id, err := trust.GenerateIdentity(rand.Reader)
	if err != nil {
		return res, err
	}
	now := time.Now()
	cred, err := trust.IssueCredential(m.Anchor, id.Public(), "mallory", now.Add(-time.Minute), time.Hour)
	if err != nil {
		return res, err
	}
	own, err := trust.IssueToken(m.Anchor, id.Public(), trust.Grant{Scopes: []string{"read:metrics"}, NotBefore: now.Add(-time.Minute), Expires: now.Add(time.Hour)}, now)
	if err != nil {
		return res, err
	}
	if err := st.baseline(ctx, &res, d); err != nil {
		return res, err
	}

	dir, err := os.MkdirTemp("", "meshagent-attacker-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	if err := id.Save(filepath.Join(dir, "identity.pem")); err != nil {
		return res, err
	}
	spec, _ := json.Marshal(attackerSpec{Anchor: m.Anchor.Public().String(), Credential: cred.Bytes(), Token: own.Bytes(),
		Stolen: st.stolen.Bytes(), Replayed: st.replayed(), Target: m.Agents[st.target].Node.Addrs()[0].String(), For: d + 2*time.Second})
	specPath := filepath.Join(dir, "spec.json")
	if err := os.WriteFile(specPath, spec, 0o600); err != nil {
		return res, err
	}
	self, err := os.Executable()
	if err != nil {
		return res, err
	}
	cmd := exec.CommandContext(ctx, "nice", "-n", "19", self)
	cmd.Env = append(os.Environ(), AttackerEnv+"="+specPath)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return res, err
	}
	if err := cmd.Start(); err != nil {
		return res, err
	}
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "ready" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return res, fmt.Errorf("attacker did not start")
	}
	time.Sleep(time.Second) // the attack is under way when the honest load starts
	res.Under = m.HonestLoad(ctx, st.callers, st.target, "read:logs", d)
	for lines.Scan() {
		if f := strings.Fields(lines.Text()); len(f) == 2 && f[0] == "attempts" {
			res.Attempts, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	if err := cmd.Wait(); err != nil {
		return res, fmt.Errorf("attacker: %w", err)
	}
	st.tally(&res, id.PeerID())
	return res, nil
}
