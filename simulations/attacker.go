//go:build meshsim

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
	"sync"
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

// attackerSpec is what the scenario hands to an attacker process. The
// identity is in identity.pem next to it (0600); tokens and envelopes are
// in their wire form.
type attackerSpec struct {
	Attack      string        `json:"attack"`
	Anchor      string        `json:"anchor"` // the anchor the attacker's credential is from
	Credential  []byte        `json:"credential"`
	Own         []byte        `json:"own"`    // its own read:metrics token
	Stolen      []byte        `json:"stolen"` // an honest caller's token
	Delegated   []byte        `json:"delegated,omitempty"`
	Expired     []byte        `json:"expired,omitempty"`
	NotYet      []byte        `json:"not_yet,omitempty"`
	Revoked     []byte        `json:"revoked,omitempty"`
	Replayed    []byte        `json:"replayed"`
	Misdirected []byte        `json:"misdirected,omitempty"`
	Target      string        `json:"target"` // multiaddr ending in /p2p/ID
	For         time.Duration `json:"for"`
}

// tokens pairs each token field of the spec with the kit's token it
// carries, for the scenario to fill and the attacker to read.
func (s *attackerSpec) tokens(k *kit) []struct {
	raw *[]byte
	tok **trust.Token
} {
	return []struct {
		raw *[]byte
		tok **trust.Token
	}{{&s.Own, &k.own}, {&s.Stolen, &k.stolen}, {&s.Delegated, &k.delegated}, {&s.Expired, &k.expired}, {&s.NotYet, &k.notYet}, {&s.Revoked, &k.revoked}}
}

// RunAttacker runs the attack named by AttackerEnv, if it is set, and
// reports whether it did, with the error that ended the attack. A program
// that calls SeparateAttacks must call it first thing in main (or
// TestMain) and, when ran is true, exit without doing its own job, with a
// non-zero status when err is not nil: the scenario starts the program
// itself again as the attacker, and counts an attacker that exits non-zero
// as a failed run.
func RunAttacker() (ran bool, err error) {
	path := os.Getenv(AttackerEnv)
	if path == "" {
		return false, nil
	}
	return true, runAttacker(path)
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
	target, err := peer.AddrInfoFromString(spec.Target)
	if err != nil {
		return err
	}
	k := &kit{id: id, tid: target.ID, addr: *target, skew: new(atomic.Int64), replayed: spec.Replayed, misdirected: spec.Misdirected, cred: cred}
	for _, t := range spec.tokens(k) {
		if len(*t.raw) == 0 {
			continue
		}
		if *t.tok, err = trust.ParseToken(*t.raw, 1<<16); err != nil {
			return err
		}
	}
	cfg := node.LocalConfig()
	cfg.Identity, cfg.Credential = id, cred
	cfg.Policy = trust.DefaultPolicy(anchor)
	if k.own != nil {
		cfg.Tokens = []*trust.Token{k.own}
	}
	cfg.HeartbeatInterval, cfg.DeadAfter = 500*time.Millisecond, 5*time.Second
	cfg.Clock = func() time.Time { return time.Now().Add(time.Duration(k.skew.Load())) }
	ctx := context.Background()
	if k.n, err = node.New(cfg); err != nil {
		return err
	}
	if err := k.n.Start(ctx); err != nil {
		return err
	}
	defer k.n.Close()
	if spec.Attack != "outsider" && !ownHosts[spec.Attack] {
		if err := k.n.Join(ctx, *target); err != nil {
			return err
		}
	}
	// The scenario switches the attack on and off with lines on stdin
	// ("on", "off") and ends it with "end" or by closing stdin; For is a
	// safety net.
	var on atomic.Bool
	stop := make(chan struct{})
	var once sync.Once
	end := func() { once.Do(func() { close(stop) }) }
	time.AfterFunc(spec.For, end)
	go func() {
		defer end()
		in := bufio.NewScanner(os.Stdin)
		for in.Scan() {
			switch in.Text() {
			case "on":
				on.Store(true)
			case "off":
				on.Store(false)
			case "end":
				return
			}
		}
	}()
	fmt.Println("ready")
	var attempts atomic.Int64
	// "attempted" tells the scenario that the attack is under way, for
	// attacks whose attempts the target cannot pin on the attacker's ID.
	go func() {
		if WaitFor(spec.For, func() error {
			if attempts.Load() == 0 {
				return fmt.Errorf("no attempt yet")
			}
			return nil
		}) == nil {
			fmt.Println("attempted")
		}
	}()
	if err := k.run(ctx, spec.Attack, &on, stop, &attempts); err != nil {
		return err
	}
	fmt.Println("attempts", attempts.Load())
	fmt.Println("landed", k.landed.Load())
	return nil
}

// SeparateAttackScenario is AttackScenario with the attacker in a process
// of its own: SeparateAttacks with the mixed flood only.
func SeparateAttackScenario(ctx context.Context, n int, d time.Duration) (AttackResult, error) {
	mixed, _ := AttackNamed("mixed")
	rs, err := SeparateAttacks(ctx, n, d, []Attack{mixed})
	if err != nil {
		return AttackResult{N: n, Attack: mixed}, err
	}
	return rs[0], nil
}

// SeparateAttacks plays each attack against one target of n honest agents
// (the stage of AttackScenario), each from a fresh attacker in a process
// of its own, started from this program's executable under the idle CPU
// scheduling class (chrt --idle; nice 19 where chrt is missing), so that
// it runs only on CPU time the honest agents leave, as an attacker on
// another machine would: what the target spends on the attack is what the
// measurement counts. For each attack the honest load is measured for d
// without it and for d under it, in four alternating windows each. The
// program must call RunAttacker first in main.
func SeparateAttacks(ctx context.Context, n int, d time.Duration, attacks []Attack) ([]AttackResult, error) {
	st, err := newAttackStage(ctx, n, nil)
	if err != nil {
		return nil, err
	}
	defer st.m.Close()
	rs, _, err := st.separateAll(ctx, d, 4, attacks, nil)
	return rs, err
}

// separateAll plays each attack in turn from a process of its own, once
// the stage has converged, in rounds windows without it and as many under
// it, d in all for either. With audit (the target's audit log), it also
// gauges the target around each window, one gauge per attack.
func (st *attackStage) separateAll(ctx context.Context, d time.Duration, rounds int, attacks []Attack, audit *auditCounter) ([]AttackResult, []*gauge, error) {
	if err := WaitFor(30*time.Second, func() error { return st.m.Converged("alive") }); err != nil {
		return nil, nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	var out []AttackResult
	var gauges []*gauge
	for _, a := range attacks {
		var g *gauge
		if audit != nil {
			g = newGauge(st, audit)
		}
		res, err := st.separate(ctx, self, a, d, rounds, g)
		if err != nil {
			return out, gauges, fmt.Errorf("%s: %w", a.Name, err)
		}
		out, gauges = append(out, res), append(gauges, g)
	}
	return out, gauges, nil
}

// separate plays one attack from a process of its own; g, when set,
// samples the target at the start and end of every window.
func (st *attackStage) separate(ctx context.Context, self string, a Attack, d time.Duration, rounds int, g *gauge) (AttackResult, error) {
	res := AttackResult{N: len(st.m.Agents), Attack: a}
	id, err := trust.GenerateIdentity(rand.Reader)
	if err != nil {
		return res, err
	}
	issuer := st.m.Anchor
	if a.Name == "outsider" {
		if issuer, err = trust.GenerateAnchorKey(nil); err != nil {
			return res, err
		}
	}
	cred, err := trust.IssueCredential(issuer, id.Public(), "mallory", time.Now().Add(-time.Minute), time.Hour)
	if err != nil {
		return res, err
	}
	k := &kit{id: id, tid: st.tid()}
	if err := st.arm(ctx, k); err != nil {
		return res, err
	}
	spec := attackerSpec{Attack: a.Name, Anchor: issuer.Public().String(), Credential: cred.Bytes(),
		Replayed: k.replayed, Misdirected: k.misdirected, Target: st.m.Agents[st.target].Node.Addrs()[0].String(), For: 2*d + time.Minute}
	for _, t := range spec.tokens(k) {
		*t.raw = (*t.tok).Bytes()
	}
	dir, err := os.MkdirTemp("", "meshagent-attacker-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	if err := id.Save(filepath.Join(dir, "identity.pem")); err != nil {
		return res, err
	}
	raw, _ := json.Marshal(spec)
	specPath := filepath.Join(dir, "spec.json")
	if err := os.WriteFile(specPath, raw, 0o600); err != nil {
		return res, err
	}
	cmd := exec.CommandContext(ctx, "chrt", "--idle", "0", self)
	if _, err := exec.LookPath("chrt"); err != nil {
		cmd = exec.CommandContext(ctx, "nice", "-n", "19", self)
	}
	cmd.Env = append(os.Environ(), AttackerEnv+"="+specPath)
	child, err := StartChild(cmd)
	if err != nil {
		return res, err
	}
	if l, ok := <-child.Lines; !ok || l != "ready" {
		child.Kill()
		return res, fmt.Errorf("attacker did not start")
	}
	attempted, ended := make(chan struct{}), make(chan struct{})
	var attempts, landed int64
	go func() {
		defer close(ended)
		first := true
		for l := range child.Lines {
			f := strings.Fields(l)
			switch {
			case len(f) == 1 && f[0] == "attempted" && first:
				close(attempted)
				first = false
			case len(f) == 2 && f[0] == "attempts":
				attempts, _ = strconv.ParseInt(f[1], 10, 64)
			case len(f) == 2 && f[0] == "landed":
				landed, _ = strconv.ParseInt(f[1], 10, 64)
			}
		}
	}()
	// The attack runs until the target has rejected it once (an
	// idle-class process may wait for CPU time), or for the resource
	// attacks, whose outsiders have keys of their own and whose attempts
	// the target may bound without a rejection, until the attacker made
	// its first attempt; then windows with and without it alternate, so
	// that the machine's drift over the run weighs on both alike.
	g.start(child.Pid())
	child.Send("on")
	ready := func() error {
		if len(st.rejectionsOf(id.PeerID())) == 0 {
			return fmt.Errorf("the target has not rejected the attacker yet")
		}
		return nil
	}
	if isResourceAttack(a.Name) {
		ready = func() error {
			select {
			case <-attempted:
				return nil
			default:
				return fmt.Errorf("the attacker has made no attempt yet")
			}
		}
	}
	if err := WaitFor(30*time.Second, ready); err != nil {
		child.Kill()
		<-ended
		return res, err
	}
	w := d / time.Duration(rounds)
	settle := w / 4
	res.Baseline, res.Under = LoadResult{Errors: map[trust.Code]int{}}, LoadResult{Errors: map[trust.Code]int{}}
	for i := 0; i < rounds; i++ {
		g.begin()
		under := st.m.HonestLoad(ctx, st.callers, st.target, "read:logs", w)
		g.end(true, under)
		res.Under.add(under)
		child.Send("off")
		time.Sleep(settle)
		g.begin()
		without := st.m.HonestLoad(ctx, st.callers, st.target, "read:logs", w)
		g.end(false, without)
		res.Baseline.add(without)
		child.Send("on")
		time.Sleep(settle) // the attack is under way when the window starts
	}
	child.Send("end")
	err = child.Stop(2*time.Minute + 2*d)
	<-ended
	res.Attempts = attempts
	if err != nil {
		return res, fmt.Errorf("attacker: %w", err)
	}
	g.finish(landed)
	st.tally(&res, id.PeerID())
	return res, nil
}
