package main

// `meshagent mcp serve`: an existing stdio MCP server onto the mesh (issue
// 14 section 3). The server runs as a child process; each of its tools is
// served as a mesh action through the daemon's /v1/handle stream, so a
// request reaches the child only after the daemon's decision function
// accepted it. See docs/mcp.md.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spf13/cobra"

	"github.com/meshagent/meshagent/node"
)

// Restarts of a child that exited: the first after mcpRestartMin, each
// next one twice as late, at most mcpRestartMax; a child that ran
// mcpRestartReset or longer starts the sequence again. Variables so that
// tests can shorten them.
var (
	mcpRestartMin   = 250 * time.Millisecond
	mcpRestartMax   = 30 * time.Second
	mcpRestartReset = 30 * time.Second
)

// mcpMaxResult bounds a tool's result: /v1/reply takes at most 1 MiB,
// its id and JSON framing included.
const mcpMaxResult = 1<<20 - 1<<10

func newMCPServeCmd() *cobra.Command {
	var name string
	var timeout time.Duration
	cmd := clientCommand(&cobra.Command{
		// Arguments and flags are checked before the daemon's config is read.
		PreRunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 || cmd.ArgsLenAtDash() != 0 {
				return usagef("mcp serve: give the MCP server's command after --")
			}
			if _, err := mcpVerb(name); err != nil {
				return usageError{err}
			}
			if cmd.Flags().Changed("timeout") {
				if err := checkTimeout(timeout); err != nil {
					return usagef("mcp serve: --timeout %v", err)
				}
			}
			return nil
		},
		Use:   "serve --home DIR --name NAME -- CMD [ARGS]",
		Short: "Serve the tools of a stdio MCP server as mesh actions (scopes mcp.NAME:TOOL)",
		Long: `Run CMD, a stdio MCP server, as a child and serve each of its tools as the
mesh action mcp.NAME:TOOL (the mapping is in docs/mcp.md) through the daemon at
--home. A request reaches the child only after the daemon checked the caller's
signature and token. The child is restarted when it exits; its stderr goes to
this process's stderr, each line prefixed with [mcp NAME].`,
	}, func(cmd *cobra.Command, args []string, c *localClient) error {
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		// A daemon that does not answer is said before a child is started.
		if err := c.call(ctx, "GET", "/v1/status", nil, io.Discard); err != nil {
			return err
		}
		return serveMCP(ctx, c, name, timeout, args, cmd.ErrOrStderr())
	}, "name")
	cmd.Flags().StringVar(&name, "name", "", "the server's name on the mesh: its tools are the actions mcp.NAME:TOOL")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "how long one tool call may take, up to 1h (default: the daemon's handler timeout for the action)")
	return cmd
}

// mcpChild runs the MCP server and restarts it when it exits.
type mcpChild struct {
	name   string
	argv   []string
	stderr io.Writer // this process's
	client *mcp.Client
	// timeout is the handler timeout asked of the daemon for each tool
	// (0: the daemon's own), and the bound of one call to the child.
	timeout time.Duration
	calls   childCalls // in flight, by the daemon's id (mcp_longcalls.go)
	// changes says the child's tool list may have changed (its
	// tools/list_changed, or a restart).
	changes chan struct{}

	mu  sync.Mutex
	run *childRun // nil while the child is not running
	why string    // why it is not running
}

// childRun is one run of the child.
type childRun struct {
	sess   *mcp.ClientSession
	cmd    *exec.Cmd
	exited chan struct{} // closed when its connection ended
}

// serveMCP serves the tools of the MCP server argv as the actions of
// name, through c, until ctx ends or the daemon refuses a stream.
func serveMCP(ctx context.Context, c *localClient, name string, timeout time.Duration, argv []string, stderr io.Writer) error {
	stderr = &lockedWriter{w: stderr} // written by the child's copier and by every goroutine here
	ch := &mcpChild{name: name, argv: argv, stderr: stderr, timeout: timeout, changes: make(chan struct{}, 1)}
	ch.client = mcp.NewClient(mcpImplementation, &mcp.ClientOptions{
		ProgressNotificationHandler: forwardProgress(c, &ch.calls),
		ToolListChangedHandler:      func(context.Context, *mcp.ToolListChangedRequest) { ch.toolsChanged() },
	})
	prefix := newPrefixWriter(stderr, "[mcp "+name+"] ")
	defer prefix.flush()

	run, err := ch.start(ctx, prefix)
	if err != nil {
		return fmt.Errorf("mcp serve: starting %s: %v", argv[0], err)
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	ts := &toolSet{ch: ch, c: c, wg: &wg, fatal: make(chan error, 1), served: map[string]*servedTool{}}
	if err := ts.reconcile(ctx, run, true); err != nil {
		cancel()
		run.sess.Close()
		return err
	}
	wg.Add(2)
	go func() { defer wg.Done(); ch.supervise(ctx, run, prefix) }()
	// The child's tool list is followed: a tools/list_changed from it, or
	// a restart, serves the new set (new tools served, gone ones stopped).
	go func() {
		defer wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch.changes:
			}
			if run, _ := ch.current(); run != nil {
				if err := ts.reconcile(ctx, run, false); err != nil && ctx.Err() == nil {
					fmt.Fprintf(stderr, "meshagent: mcp serve %s: the server's new tools: %v; still serving the earlier set\n", name, err)
				}
			}
		}
	}()
	select {
	case <-ctx.Done():
		return nil
	case err := <-ts.fatal:
		return err
	}
}

// toolsChanged notes that the child's tool list may have changed.
func (ch *mcpChild) toolsChanged() {
	select {
	case ch.changes <- struct{}{}:
	default:
	}
}

// toolSet is the set of the child's tools served, one stream each.
type toolSet struct {
	ch     *mcpChild
	c      *localClient
	wg     *sync.WaitGroup
	fatal  chan error // the first refusal that ends mcp serve
	mu     sync.Mutex
	served map[string]*servedTool // by scope
}

type servedTool struct {
	tool   string
	key    string // its advertisement, encoded: a change restarts its stream
	cancel context.CancelFunc
	done   chan struct{}
}

// reconcile lists run's tools and serves exactly them: a new tool gets a
// stream of its own, a gone one's stream is closed (the daemon stops
// serving and advertising it), a changed one's is opened again. At start
// (initial) a child with no tools is an error.
func (ts *toolSet) reconcile(ctx context.Context, run *childRun, initial bool) error {
	ch := ts.ch
	var tools []string
	info := map[string]*mcp.Tool{}
	for t, err := range run.sess.Tools(ctx, nil) {
		if err != nil {
			return fmt.Errorf("mcp serve: listing the tools of %s: %v", ch.argv[0], err)
		}
		tools = append(tools, t.Name)
		info[t.Name] = t
	}
	mapped, err := mapMCPTools(ch.name, tools)
	if err == nil && len(mapped) == 0 && initial {
		err = fmt.Errorf("mcp serve: %s lists no tools: nothing to serve", ch.argv[0])
	}
	if err != nil {
		return err
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	want := map[string]bool{}
	for _, m := range mapped {
		want[m.Scope] = true
		ad := toolAdvert(m, info[m.Tool])
		key := ad.Encode()
		if cur := ts.served[m.Scope]; cur != nil {
			if cur.key == key {
				continue
			}
			cur.cancel()
			<-cur.done // its stream closed: the daemon takes the action again
		}
		tctx, cancel := context.WithCancel(ctx)
		st := &servedTool{tool: m.Tool, key: key, cancel: cancel, done: make(chan struct{})}
		ts.served[m.Scope] = st
		fmt.Fprintf(ch.stderr, "meshagent: mcp serve %s: tool %q is served as %s\n", ch.name, m.Tool, m.Scope)
		ts.wg.Add(1)
		go func() {
			defer ts.wg.Done()
			defer close(st.done)
			if err := ch.serveAction(tctx, ts.c, m, ad); err != nil && tctx.Err() == nil {
				select {
				case ts.fatal <- err:
				default:
				}
			}
		}()
	}
	for scope, cur := range ts.served {
		if !want[scope] {
			cur.cancel()
			<-cur.done
			delete(ts.served, scope)
			fmt.Fprintf(ch.stderr, "meshagent: mcp serve %s: tool %q is gone from the server: %s is no longer served\n", ch.name, cur.tool, scope)
		}
	}
	return nil
}

// start starts the child and connects to it.
func (ch *mcpChild) start(ctx context.Context, stderr io.Writer) (*childRun, error) {
	cmd := exec.Command(ch.argv[0], ch.argv[1:]...)
	cmd.Stderr = stderr
	sess, err := ch.client.Connect(ctx, &mcp.CommandTransport{Command: cmd, TerminateDuration: 2 * time.Second}, nil)
	if err != nil {
		if cmd.Process != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		return nil, err
	}
	run := &childRun{sess: sess, cmd: cmd, exited: make(chan struct{})}
	go func() { _ = sess.Wait(); close(run.exited) }()
	ch.mu.Lock()
	ch.run, ch.why = run, ""
	ch.mu.Unlock()
	return run, nil
}

// supervise waits for the child to exit and starts it again, with
// backoff, until ctx ends; then it stops the child.
func (ch *mcpChild) supervise(ctx context.Context, run *childRun, prefix *prefixWriter) {
	delay := mcpRestartMin
	for {
		started := time.Now()
		select {
		case <-ctx.Done():
			ch.down("mcp serve is stopping")
			run.sess.Close() // closes its stdin, then SIGTERM, then SIGKILL
			<-run.exited
			return
		case <-run.exited:
		}
		ch.down("it exited")
		err := run.sess.Close() // reaps it
		prefix.flush()
		why := "it exited"
		if run.cmd.ProcessState != nil {
			why = "it exited (" + run.cmd.ProcessState.String() + ")"
		} else if err != nil {
			why = "it exited (" + oneLine(err) + ")"
		}
		if time.Since(started) >= mcpRestartReset {
			delay = mcpRestartMin
		}
		for {
			ch.down(why + "; it is being restarted")
			fmt.Fprintf(ch.stderr, "meshagent: mcp serve %s: the MCP server %s; restarting it in %s\n", ch.name, why, delay)
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
			delay = min(2*delay, mcpRestartMax)
			var err error
			if run, err = ch.start(ctx, prefix); err == nil {
				fmt.Fprintf(ch.stderr, "meshagent: mcp serve %s: the MCP server is running again\n", ch.name)
				ch.toolsChanged() // it may list other tools now
				break
			}
			if ctx.Err() != nil {
				return
			}
			why = "did not start (" + oneLine(err) + ")"
		}
	}
}

func (ch *mcpChild) down(why string) {
	ch.mu.Lock()
	ch.run, ch.why = nil, why
	ch.mu.Unlock()
}

func (ch *mcpChild) current() (*childRun, string) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return ch.run, ch.why
}

// serveAction streams the requests for m's scope from the daemon and
// answers each with a call of m's tool, until ctx ends. A stream that ends
// (the daemon stopped or restarted) is opened again; a refusal (the
// action is served by another process, say) is returned.
func (ch *mcpChild) serveAction(ctx context.Context, c *localClient, m mcpToolScope, ad url.Values) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	delay := mcpRestartMin
	for {
		q := url.Values{}
		for k, v := range ad {
			q[k] = v
		}
		if ch.timeout > 0 {
			q.Set("timeout", ch.timeout.String())
		}
		err := c.namedEvents(ctx, "/v1/handle?"+q.Encode(), func(name string, d []byte) (bool, error) {
			delay = mcpRestartMin
			var ev struct {
				ID   string          `json:"id"`
				Body json.RawMessage `json:"body"`
			}
			if err := json.Unmarshal(d, &ev); err != nil {
				return false, fmt.Errorf("mcp serve: a %s event of %s: %v", name, m.Scope, err)
			}
			if name == "cancel" {
				// The caller gave up or the handler timeout passed: the
				// child gets notifications/cancelled.
				ch.calls.stop(ev.ID)
				return true, nil
			}
			if name != "" {
				return true, nil
			}
			callCtx, cancel := context.WithCancel(ctx)
			ch.calls.add(ev.ID, cancel)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer cancel()
				reply := map[string]any{"id": ev.ID}
				body, err := ch.call(callCtx, m.Tool, ev.ID, ev.Body)
				ch.calls.done(ev.ID)
				if err != nil {
					reply["error"] = err.Error()
				} else {
					reply["body"] = body
				}
				// The caller may have given up: the daemon then answers 404.
				_ = c.call(ctx, "POST", "/v1/reply", reply, io.Discard)
			}()
			return true, nil
		})
		if ctx.Err() != nil {
			return nil
		}
		// The daemon's refusal of the stream (already_handled, say) is a
		// plain error (see apiError.err); the stream's end, or a failure
		// to reach the daemon or read from it (it stopped), wraps the
		// cause: those are tried again.
		var se streamError
		if !errors.Is(err, errStreamEnded) && !errors.As(err, &se) && errors.Unwrap(err) == nil {
			return fmt.Errorf("mcp serve: serving %s: %v", m.Scope, err)
		}
		fmt.Fprintf(ch.stderr, "meshagent: mcp serve %s: the daemon's stream of %s ended (%v); opening it again in %s\n", ch.name, m.Scope, oneLine(err), delay)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, mcpRestartMax)
	}
}

// call calls tool with the request body as its arguments and returns the
// tool's result as JSON (CallToolResult: content, structuredContent). A
// tool that reports an error, or a child that is down or exits during the
// call, is an error, which becomes the handler's error.
//
// The call's progress token is id, the daemon's: the child's progress
// notifications go to the caller (forwardProgress).
func (ch *mcpChild) call(ctx context.Context, tool, id string, body json.RawMessage) (json.RawMessage, error) {
	args := bytes.TrimSpace(body)
	if len(args) == 0 || bytes.Equal(args, []byte("null")) {
		args = []byte("{}")
	}
	if args[0] != '{' {
		return nil, fmt.Errorf("the arguments of MCP tool %q must be a JSON object", tool)
	}
	run, why := ch.current()
	if run == nil {
		return nil, fmt.Errorf("MCP server %s is not running: %s", ch.name, why)
	}
	timeout := ch.timeout
	if timeout == 0 {
		timeout = node.MaxTimeout // the daemon's cancel event ends it sooner
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	params := &mcp.CallToolParams{Name: tool, Arguments: json.RawMessage(args)}
	if id != "" {
		params.SetProgressToken(id)
	}
	res, err := run.sess.CallTool(ctx, params)
	if err != nil {
		// An error the server answered is its own; any other may be
		// its exit (EOF on its stdout), seen before the connection's end.
		var rpcErr *jsonrpc.Error
		if !errors.As(err, &rpcErr) && ctx.Err() == nil {
			select {
			case <-run.exited:
				return nil, fmt.Errorf("MCP server %s exited during the call to %q; it is being restarted", ch.name, tool)
			case <-time.After(time.Second):
			}
		}
		return nil, fmt.Errorf("MCP server %s: tool %q: %v", ch.name, tool, oneLine(err))
	}
	if res.IsError {
		return nil, fmt.Errorf("MCP tool %q failed: %s", tool, contentText(res.Content))
	}
	out, err := json.Marshal(res)
	if err != nil {
		return nil, fmt.Errorf("MCP tool %q: encoding its result: %v", tool, err)
	}
	if len(out) > mcpMaxResult {
		return nil, fmt.Errorf("MCP tool %q: its result is %d bytes, over the %d a reply may carry", tool, len(out), mcpMaxResult)
	}
	return out, nil
}

// contentText is the text of a tool result's content, for an error
// message.
func contentText(cs []mcp.Content) string {
	var parts []string
	for _, c := range cs {
		if t, ok := c.(*mcp.TextContent); ok {
			parts = append(parts, t.Text)
		}
	}
	if len(parts) == 0 {
		return "(no text)"
	}
	return strings.Join(parts, " ")
}

// lockedWriter makes a writer safe for concurrent use.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// prefixWriter writes each line written to it to w with a prefix. A line
// longer than maxPrefixedLine is cut into several.
type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	buf    []byte
}

const maxPrefixedLine = 16 << 10

func newPrefixWriter(w io.Writer, prefix string) *prefixWriter {
	return &prefixWriter{w: w, prefix: prefix}
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 && len(p.buf) < maxPrefixedLine {
			break
		}
		if i < 0 || i >= maxPrefixedLine {
			i = maxPrefixedLine - 1
		}
		line := strings.TrimSuffix(string(p.buf[:i+1]), "\n")
		p.buf = p.buf[i+1:]
		fmt.Fprintf(p.w, "%s%s\n", p.prefix, line)
	}
	return len(b), nil
}

// flush writes what is left of a last line without its newline.
func (p *prefixWriter) flush() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.buf) > 0 {
		fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.buf)
		p.buf = nil
	}
}
