package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

// localClient talks to one daemon's local API, on the Unix socket its
// agent's config names. It reads that config once, when it is made: a
// command makes one and uses it for all its requests.
type localClient struct {
	http *http.Client
}

// newLocalClient reads the config of the agent at home and returns a
// client of its daemon's local API.
func newLocalClient(home string) (*localClient, error) {
	fc, err := loadFileConfig(home)
	if err != nil {
		return nil, err
	}
	sock := apiSocketPath(home, fc)
	return &localClient{http: &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}}, nil
}

// do sends one request and returns the daemon's answer if it is 2xx; the
// caller closes its body. Otherwise the error is the daemon's (see
// apiError.err), or says that no daemon answers.
func (c *localClient) do(req *http.Request) (*http.Response, error) {
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("local API (is 'meshagent run' running?): %w", err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, readAPIError(resp).err()
	}
	return resp, nil
}

// call does one request to the local API with in (if not nil) as its JSON
// body, and copies the answer to out.
func (c *localClient) call(ctx context.Context, method, path string, in any, out io.Writer) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://meshagent"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.copyAnswer(req, out)
}

// post sends data as the body of a POST to path and copies the answer to
// out.
func (c *localClient) post(ctx context.Context, path, contentType string, data []byte, out io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, "POST", "http://meshagent"+path, bytes.NewReader(data))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", contentType)
	return c.copyAnswer(req, out)
}

// maxAnswer bounds what the client reads of one local API answer.
const maxAnswer = 16 << 20

func (c *localClient) copyAnswer(req *http.Request, out io.Writer) error {
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	// Read whole before writing: a failed read writes nothing.
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return fmt.Errorf("local API: reading the answer: %w", err)
	}
	_, err = out.Write(data)
	return err
}

// maxErrorAnswer bounds what the client reads of an error answer.
const maxErrorAnswer = 1 << 20

// readAPIError reads the error of a non-2xx answer. An answer that carries
// none (not JSON, or no "error") gets the HTTP status as its error.
func readAPIError(resp *http.Response) apiError {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorAnswer))
	var e apiError
	_ = json.Unmarshal(data, &e) // what does not decode stays empty
	if e.Error == "" {
		e.Error = "local API: " + resp.Status
	}
	return e
}

// err is the one-line error the CLI reports for e: the reason code, then
// the daemon's text (which often starts with the code already: it is not
// said twice). A busy answer says first when to try again.
func (e apiError) err() error {
	switch {
	case e.Code == string(protocol.CodeBusy):
		return busyError(e)
	case e.Code == "" || strings.HasPrefix(e.Error, e.Code+": "):
		return errors.New(e.Error)
	}
	return fmt.Errorf("%s: %s", e.Code, e.Error)
}

// busyError is the one line of a busy answer: "busy: retry after 250ms:"
// and why (the daemon's text without its code and retry-after, which
// lead).
func busyError(e apiError) error {
	why := strings.TrimPrefix(e.Error, string(protocol.CodeBusy)+": ")
	if i := strings.LastIndex(why, " (retry after "); i >= 0 {
		why = why[:i]
	}
	return fmt.Errorf("%s: retry after %s: %s", protocol.CodeBusy, time.Duration(e.RetryAfterMS)*time.Millisecond, why)
}

// clientCommand is a command that talks to the daemon at --home: run gets a
// client made once for the whole command. --home and the flags named in
// need (which the caller defines) are required.
func clientCommand(cmd *cobra.Command, run func(cmd *cobra.Command, args []string, c *localClient) error, need ...string) *cobra.Command {
	var home string
	cmd.Flags().StringVar(&home, "home", "", "agent home directory")
	required(cmd, append([]string{"home"}, need...)...)
	cmd.RunE = action(func(cmd *cobra.Command, args []string) error {
		c, err := newLocalClient(home)
		if err != nil {
			return err
		}
		return run(cmd, args, c)
	})
	return cmd
}

func newClientCommands() []*cobra.Command {
	status := clientCommand(&cobra.Command{
		Use: "status --home DIR", Short: "Print the daemon's status as JSON", Args: exactArgs(0),
	}, func(cmd *cobra.Command, _ []string, c *localClient) error {
		return c.call(cmd.Context(), "GET", "/v1/status", nil, cmd.OutOrStdout())
	})
	peers := clientCommand(&cobra.Command{
		Use: "peers --home DIR", Short: "List admitted peers as JSON", Args: exactArgs(0),
	}, func(cmd *cobra.Command, _ []string, c *localClient) error {
		return c.call(cmd.Context(), "GET", "/v1/peers", nil, cmd.OutOrStdout())
	})

	var to, act, body, tokenFile, corr string
	var progress bool
	var timeout time.Duration
	send := clientCommand(&cobra.Command{
		Use: "send --home DIR --to PEERID --action SCOPE [--body JSON] [--timeout DURATION] [--token FILE] [--correlation-id HEX] [--progress]", Short: "Call an action on a peer and print the reply as JSON", Args: exactArgs(0),
	}, func(cmd *cobra.Command, _ []string, c *localClient) error {
		if body == "" {
			body = "{}"
		}
		if !json.Valid([]byte(body)) {
			return usagef("--body is not valid JSON")
		}
		req := map[string]any{"to": to, "action": act, "body": json.RawMessage(body)}
		if timeout != 0 {
			req["timeout"] = timeout.String()
		}
		if tokenFile != "" {
			t, err := loadToken(tokenFile)
			if err != nil {
				return fmt.Errorf("--token: %v", err)
			}
			req["token"] = string(trust.EncodePEM(t.Bytes(), trust.PEMToken))
		}
		if corr != "" {
			req["correlation_id"] = corr
		}
		if progress {
			return sendWithProgress(cmd.Context(), c, req, cmd.OutOrStdout(), cmd.ErrOrStderr())
		}
		return c.call(cmd.Context(), "POST", "/v1/send", req, cmd.OutOrStdout())
	}, "to", "action")
	send.Flags().StringVar(&to, "to", "", "peer ID to call")
	send.Flags().StringVar(&act, "action", "", "action (scope) to call")
	send.Flags().StringVar(&body, "body", "", "JSON body")
	send.Flags().StringVar(&tokenFile, "token", "", "token file to present for this call (one this agent holds; default: the daemon's first that grants the action)")
	send.Flags().BoolVar(&progress, "progress", false, "print the callee's progress messages on stderr, one JSON line each, as they come")
	send.Flags().StringVar(&corr, "correlation-id", "", "correlation ID (32 hex digits) to continue a conversation")
	send.Flags().DurationVar(&timeout, "timeout", 0, "how long to wait for the reply, up to 1h (default: the daemon's for the action, 10s unless configured)")

	tokens := clientCommand(&cobra.Command{
		Use: "tokens --home DIR", Short: "List the capability tokens the daemon holds, as JSON", Args: exactArgs(0),
	}, func(cmd *cobra.Command, _ []string, c *localClient) error {
		return c.call(cmd.Context(), "GET", "/v1/tokens", nil, cmd.OutOrStdout())
	})
	revoke := clientCommand(&cobra.Command{
		Use: "revoke --home DIR FILE", Short: "Apply a revocation (from 'meshagent ca revoke') and publish it to the mesh", Args: exactArgs(1),
	}, func(cmd *cobra.Command, args []string, c *localClient) error {
		data, err := readPEMFile(args[0], trust.PEMRevocation, trust.MaxRevocationSize)
		if err != nil {
			return err
		}
		return c.post(cmd.Context(), "/v1/revoke", "application/octet-stream", data, cmd.OutOrStdout())
	})
	return []*cobra.Command{status, peers, send, tokens, revoke}
}
