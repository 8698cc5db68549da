//go:build meshsim

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/simulations"
)

// chromiumPath is the headless browser the console test drives: Debian's
// chromium (`make test` installs it when it runs as root), or another
// Chrome on the PATH; "" when there is none.
func chromiumPath() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// newBrowser starts a headless Chromium for the test, closed at its end,
// and returns its tab's context; the test skips when there is no
// Chromium.
func newBrowser(t *testing.T, within time.Duration) context.Context {
	t.Helper()
	path := chromiumPath()
	if path == "" {
		t.Skip("no chromium on the PATH: the console's browser test needs one (apt-get install chromium; make test does it as root)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.WindowSize(1400, 1000))
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run its sandbox as root
	}
	ctx, cancel := context.WithTimeout(context.Background(), within)
	ctx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	ctx, cancelTab := chromedp.NewContext(ctx)
	t.Cleanup(func() { cancelTab(); cancelAlloc(); cancel() })
	return ctx
}

// consoleLine is the line the daemon says with the console's URL.
var consoleLine = regexp.MustCompile(`console \(read-only[^)]*\): (http://\S+)`)

// startConsoleDaemon starts the daemon at home with fc (its console on a
// free loopback port) and returns its node and the console's URL with
// the access token.
func startConsoleDaemon(t *testing.T, home string, fc *fileConfig) (*node.Node, string) {
	t.Helper()
	fc.Console = "127.0.0.1:0"
	log := new(syncBuffer)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon %s said:\n%s", home, log.String())
		}
	})
	n := startDaemonLogging(t, home, fc, log)
	m := consoleLine.FindStringSubmatch(log.String())
	if m == nil {
		t.Fatalf("the daemon did not print its console URL: %s", log.String())
	}
	return n, m[1]
}

// hostileDescription is an advertised description that would run script
// if the console put it in the page as HTML.
const hostileDescription = `Logs.<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">`

// The console in headless Chromium, against two daemons: refused without
// the access token; with it, both agents listed with their liveness and
// what they advertise (a script in a description is shown as text and
// never runs); a call shows up in the live tail; a pasted token from
// another CA, and one presented by the wrong holder, show their reason.
// MESHAGENT_CONSOLE_SCREENSHOT=FILE saves the page as a PNG (make
// console-screenshot writes docs/img/console.png).
func TestConsoleInBrowser(t *testing.T) {
	ctx := newBrowser(t, 90*time.Second)
	m := newTestMesh(t)
	a, aID, fa := m.agent("alice", "ping:agent,read:logs")
	b, bID, fb := m.agent("bob", "")
	bob := startDaemon(t, b, fb)
	fa.Bootstrap = []string{bob.Addrs()[0].String()}
	alice, consoleURL := startConsoleDaemon(t, a, fa)
	admitted(t, a, bID, 10*time.Second)
	q := url.Values{"action": {"read:logs"}, "description": {hostileDescription}, "input_schema": {logsSchemaJSON}}
	if _, code, body := openStream(t, b, "/v1/handle?"+q.Encode()); code != 200 {
		t.Fatalf("/v1/handle: %d %s", code, body)
	}
	waitPeerActions(t, a, bID, "read:logs")

	u, _ := url.Parse(consoleURL)
	base := "http://" + u.Host + "/"
	// poll waits until expr is true in the page, evaluating it every 50 ms
	// (each evaluation bounded, so that a navigation under way is only a
	// retry), for at most 20 s.
	poll := func(what, expr string) {
		t.Helper()
		err := simulations.WaitForEvery(20*time.Second, 50*time.Millisecond, func() error {
			ectx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			ok, err := chromedp.Run(ectx, chromedp.Evaluate[bool](expr))
			if err == nil && !ok {
				err = fmt.Errorf("not yet")
			}
			return err
		})
		if err != nil {
			body, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
			t.Fatalf("%s: %v; the page says:\n%s", what, err, body)
		}
	}
	// text is the rendered text of the first element sel matches (read by
	// script: chromedp's DOM queries may lag a navigation just done).
	text := func(sel string) string {
		t.Helper()
		js, _ := json.Marshal(sel)
		s, err := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`document.querySelector(%s).innerText`, js)))
		if err != nil {
			t.Fatalf("%s: %v", sel, err)
		}
		return s
	}

	// Without the token: refused, and nothing of the mesh on the page.
	resp, err := chromedp.Run(ctx, chromedp.NavigateResponse(base))
	if err != nil {
		t.Fatal(err)
	}
	if body := text("body"); resp.Status != 401 || !strings.Contains(body, "access token") || strings.Contains(body, "bob") || strings.Contains(body, bID) {
		t.Fatalf("without the token: %d %q", resp.Status, body)
	}

	// With it: the token moves to a cookie that the page's scripts cannot
	// read, and the URL loses it.
	if err := chromedp.Do(ctx, chromedp.Navigate(consoleURL)); err != nil {
		t.Fatal(err)
	}
	poll("both agents listed, alive", `(() => {
		const rows = [...document.querySelectorAll("#agents tr.agent")];
		const alive = n => rows.some(r => r.querySelector(".agent-name").textContent.startsWith(n) && r.dataset.state === "alive");
		return rows.length === 2 && alive("alice") && alive("bob");
	})()`)
	if loc, _ := chromedp.Run(ctx, chromedp.Location()); strings.Contains(loc, "token") {
		t.Fatalf("the URL kept the token: %s", loc)
	}
	if ck, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.cookie`)); ck != "" {
		t.Fatalf("the page's scripts can read the cookie: %q", ck)
	}

	// Bob's advertised description: shown as text, never run.
	if d := text("#agents .description"); d != hostileDescription {
		t.Fatalf("description shown as %q", d)
	}
	inert, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.__pwned === undefined && document.scripts.length === 1 &&
		document.querySelectorAll("#agents img, #agents script").length === 0`))
	if err != nil || !inert {
		t.Fatalf("the description's markup became page content (inert %v, %v)", inert, err)
	}

	// A call shows up in the live tail.
	poll("the live tail connected", `document.getElementById("tail-status").dataset.state === "live"`)
	mustOK(t, "send", "--home", a, "--to", bID, "--action", "ping:agent", "--body", "{}")
	poll("the call in the live tail", `[...document.querySelectorAll("#tail-body tr")].some(r =>
		r.cells[1].textContent === "out" && r.cells[2].textContent === "request" && r.cells[4].textContent === "bob" &&
		r.cells[5].textContent === "ping:agent" && r.cells[6].textContent === "accept")`)
	// A refused one, with its reason: alice holds no token for write:reports.
	if r := cli(t, "send", "--home", a, "--to", bID, "--action", "write:reports", "--body", "{}"); r.code == 0 {
		t.Fatalf("a call without a token: %+v", r)
	}
	poll("the refused call in the live tail", `[...document.querySelectorAll("#tail-body tr")].some(r =>
		r.cells[5].textContent === "write:reports" && r.cells[6].textContent === "reject" && r.cells[7].textContent !== "")`)

	// A token of another CA: untrusted_root, with the chain decoded.
	other := newTestMesh(t)
	otherTok := filepath.Join(t.TempDir(), "other.token")
	mustOK(t, "token", "issue", "--ca", other.ca, "--to", bID, "--scopes", "read:logs", "--out", otherTok)
	inspect := func(tokenFile, holder, action string) string {
		t.Helper()
		pemText, err := os.ReadFile(tokenFile)
		if err != nil {
			t.Fatal(err)
		}
		// As typed and chosen (SetValue refuses an empty value).
		js, _ := json.Marshal([]string{string(pemText), holder, action})
		set := fmt.Sprintf(`(() => {
			const [tok, holder, action] = %s;
			document.getElementById("token-input").value = tok;
			document.getElementById("holder-input").value = holder;
			document.getElementById("action-input").value = action;
			document.documentElement.dataset.old = "1";
			return document.getElementById("holder-input").value === holder;
		})()`, js)
		if ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](set)); err != nil || !ok {
			t.Fatalf("filling the form: %v %v", ok, err)
		}
		// The page answering the click is the one without the mark.
		if err := chromedp.Do(ctx, chromedp.Click(chromedp.ID("inspect-button"))); err != nil {
			t.Fatal(err)
		}
		poll("a verdict", `document.documentElement.dataset.old === undefined && document.getElementById("verdict-text") !== null`)
		return text("#verdict-text")
	}
	if v := inspect(otherTok, "", ""); !strings.HasPrefix(v, "invalid: untrusted_root") {
		t.Fatalf("a token of another CA: %q", v)
	}
	if chain := text("#chain"); !strings.Contains(chain, "read:logs") || !strings.Contains(chain, "bob") {
		t.Fatalf("the chain decoded: %q", chain)
	}
	// Alice's own token, presented by bob: not_holder; by alice: valid.
	if v := inspect(filepath.Join(a, testTokenFile), bID, "ping:agent"); !strings.HasPrefix(v, "invalid: not_holder") {
		t.Fatalf("alice's token for bob: %q", v)
	}
	if v := inspect(filepath.Join(a, testTokenFile), "", "ping:agent"); v != "valid" {
		t.Fatalf("alice's token for herself: %q", v)
	}
	// The same verdicts as `token verify`.
	if r := cli(t, "token", "verify", filepath.Join(a, testTokenFile), "--anchor", m.anchor, "--holder", bID, "--action", "ping:agent"); !strings.HasPrefix(r.stdout, "invalid: not_holder") {
		t.Fatalf("token verify: %+v", r)
	}

	// A revocation published by bob reaches alice: listed, and the token
	// it revokes is now refused by the inspector, for that reason.
	tok2 := filepath.Join(t.TempDir(), "second.token")
	mustOK(t, "token", "issue", "--ca", m.ca, "--to", aID, "--scopes", "read:logs", "--out", tok2)
	var info struct{ Links []struct{ ID string } }
	if err := json.Unmarshal([]byte(mustOK(t, "token", "inspect", tok2)), &info); err != nil || len(info.Links) != 1 {
		t.Fatalf("token inspect: %+v %v", info, err)
	}
	rev := filepath.Join(t.TempDir(), "rev.pem")
	mustOK(t, "ca", "revoke", "--dir", m.ca, "--token", info.Links[0].ID, "--out", rev)
	mustOK(t, "revoke", "--home", b, rev)
	if err := simulations.WaitFor(20*time.Second, func() error {
		if err := chromedp.Do(ctx, chromedp.Navigate(base)); err != nil {
			return err
		}
		if s := text("#revocations"); !strings.Contains(s, info.Links[0].ID) {
			return fmt.Errorf("the revocation is not listed: %s", s)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if v := inspect(tok2, "", "read:logs"); !strings.HasPrefix(v, "invalid: revoked") {
		t.Fatalf("a revoked token: %q", v)
	}

	if out := os.Getenv("MESHAGENT_CONSOLE_SCREENSHOT"); out != "" {
		poll("the tail refilled", `document.querySelectorAll("#tail-body tr").length >= 3`)
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(out, png, 0o644); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(os.Stderr, "wrote %s (%d bytes)\n", out, len(png))
	}

	// What a peer puts in an audit record (the detail of its refusal, a
	// topic) reaches the live tail as text, never as markup.
	c2 := testConsole(t, alice, m.anchor)
	const hostileDetail = `<img src=x onerror="window.__pwned=3"><script>window.__pwned=4</script>`
	c2.tail.add(node.AuditRecord{Time: time.Now(), Direction: "in", Kind: "request", Sender: bID, Action: "read:logs",
		Decision: "reject", Reason: "bad_signature", Detail: hostileDetail})
	if err := chromedp.Do(ctx, chromedp.Navigate(c2.url())); err != nil {
		t.Fatal(err)
	}
	poll("the hostile record in the tail, as text", fmt.Sprintf(`[...document.querySelectorAll("#tail-body tr")].some(r =>
		r.cells[8].textContent === %q) && document.querySelectorAll("#tail-body img, #tail-body script").length === 0`, hostileDetail))
	if inert, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.__pwned === undefined`)); err != nil || !inert {
		t.Fatalf("the record's markup ran (%v)", err)
	}
}
