package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

// apiCall does one request to the local API and copies the JSON answer to
// out. A non-2xx answer is an error carrying the reason code; a busy one
// (503) says first when to try again.
func apiCall(home, method, path string, in any, out io.Writer) error {
	c, err := apiClient(home)
	if err != nil {
		return err
	}
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://meshagent"+path, body)
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("local API (is 'meshagent run' running?): %w", err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode/100 != 2 {
		var e apiError
		_ = json.Unmarshal(data, &e)
		if e.Code == string(protocol.CodeBusy) {
			return busyError(e)
		}
		if e.Code != "" {
			return fmt.Errorf("%s: %s", e.Code, e.Error)
		}
		return fmt.Errorf("%s", e.Error)
	}
	_, err = out.Write(data)
	return err
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

func newClientCommands() []*cobra.Command {
	var home string
	status := &cobra.Command{
		Use: "status --home DIR", Short: "Print the daemon's status as JSON", Args: exactArgs(0),
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			return apiCall(home, "GET", "/v1/status", nil, cmd.OutOrStdout())
		}),
	}
	status.Flags().StringVar(&home, "home", "", "agent home directory")
	required(status, "home")

	peers := &cobra.Command{
		Use: "peers --home DIR", Short: "List admitted peers as JSON", Args: exactArgs(0),
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			return apiCall(home, "GET", "/v1/peers", nil, cmd.OutOrStdout())
		}),
	}
	peers.Flags().StringVar(&home, "home", "", "agent home directory")
	required(peers, "home")

	var to, act, body string
	var timeout time.Duration
	send := &cobra.Command{
		Use: "send --home DIR --to PEERID --action SCOPE [--body JSON] [--timeout 10s]", Short: "Call an action on a peer and print the reply as JSON", Args: exactArgs(0),
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			if body == "" {
				body = "{}"
			}
			if !json.Valid([]byte(body)) {
				return usagef("--body is not valid JSON")
			}
			return apiCall(home, "POST", "/v1/send", map[string]any{"to": to, "action": act, "body": json.RawMessage(body), "timeout": timeout.String()}, cmd.OutOrStdout())
		}),
	}
	send.Flags().StringVar(&home, "home", "", "agent home directory")
	send.Flags().StringVar(&to, "to", "", "peer ID to call")
	send.Flags().StringVar(&act, "action", "", "action (scope) to call")
	send.Flags().StringVar(&body, "body", "", "JSON body")
	send.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "how long to wait for the reply")
	required(send, "home", "to", "action")
	tokens := &cobra.Command{
		Use: "tokens --home DIR", Short: "List the capability tokens the daemon holds, as JSON", Args: exactArgs(0),
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			return apiCall(home, "GET", "/v1/tokens", nil, cmd.OutOrStdout())
		}),
	}
	tokens.Flags().StringVar(&home, "home", "", "agent home directory")
	required(tokens, "home")
	revoke := &cobra.Command{
		Use: "revoke --home DIR FILE", Short: "Apply a revocation (from 'meshagent ca revoke') and publish it to the mesh", Args: exactArgs(1),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			data, err := readPEMFile(args[0], trust.PEMRevocation, trust.MaxRevocationSize)
			if err != nil {
				return err
			}
			c, err := apiClient(home)
			if err != nil {
				return err
			}
			resp, err := c.Post("http://meshagent/v1/revoke", "application/octet-stream", bytes.NewReader(data))
			if err != nil {
				return fmt.Errorf("local API (is 'meshagent run' running?): %w", err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			if resp.StatusCode != 200 {
				var e apiError
				_ = json.Unmarshal(body, &e)
				return fmt.Errorf("%s", e.Error)
			}
			_, err = cmd.OutOrStdout().Write(body)
			return err
		}),
	}
	revoke.Flags().StringVar(&home, "home", "", "agent home directory")
	required(revoke, "home")
	return []*cobra.Command{status, peers, send, tokens, revoke}
}
