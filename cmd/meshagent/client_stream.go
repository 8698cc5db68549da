package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"strings"

	"github.com/spf13/cobra"
)

// errStreamEnded is returned by events when the daemon ends a stream that
// its reader still reads: the daemon stopped, or dropped the reader.
var errStreamEnded = errors.New("the daemon ended the stream (it stopped, or dropped this reader)")

// streamError is the reason the daemon gave, in a last event (event: error,
// data: {"error", "code"}), for ending a stream.
type streamError struct{ code, msg string }

func (e streamError) Error() string {
	if e.code == fellBehindCode {
		return fmt.Sprintf("subscription dropped: fell behind (the daemon keeps at most %d MiB for a slow reader)", maxSubscriberBytes>>20)
	}
	if e.code != "" {
		return fmt.Sprintf("stream ended by the daemon: %s: %s", e.code, e.msg)
	}
	return "stream ended by the daemon: " + e.msg
}

// events opens a server-sent-event stream on the local API and calls f
// with each message event's data until f returns false or an error, or ctx
// ends. A stream that ends before is an error: a streamError when the
// daemon said why (event: error), errStreamEnded otherwise. Events of
// other types, and comments, are skipped.
func (c *localClient) events(ctx context.Context, path string, f func(data []byte) (bool, error)) error {
	return c.namedEvents(ctx, path, func(name string, d []byte) (bool, error) {
		if name != "" {
			return true, nil // an event this client does not read (cancel, say)
		}
		return f(d)
	})
}

// namedEvents is events that also hands f the events of other names than
// message and error (cancel, progress...), with their name ("" for
// message).
func (c *localClient) namedEvents(ctx context.Context, path string, f func(name string, data []byte) (bool, error)) error {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://meshagent"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var name string
	var data []byte
	hasData := false
	for sc.Scan() {
		line := sc.Text()
		if line != "" {
			field, value, _ := strings.Cut(line, ":")
			value = strings.TrimPrefix(value, " ")
			switch field {
			case "event":
				name = value
			case "data":
				if hasData {
					data = append(data, '\n')
				}
				data, hasData = append(data, value...), true
			}
			continue
		}
		// A blank line ends an event.
		ev, d, ok := name, data, hasData
		name, data, hasData = "", nil, false
		switch {
		case !ok:
		case ev == "" || ev == "message":
			more, err := f("", d)
			if err != nil || !more {
				return err
			}
		case ev == "error":
			var e apiError
			if json.Unmarshal(d, &e) != nil || e.Error == "" {
				e = apiError{Error: string(d)}
			}
			return streamError{code: e.Code, msg: e.Error}
		default:
			more, err := f(ev, d)
			if err != nil || !more {
				return err
			}
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("local API stream: %w", err)
	}
	return errStreamEnded
}

func newStreamCommands() []*cobra.Command {
	var topic, act, body, description, inputSchema string
	var count int
	publish := clientCommand(&cobra.Command{
		Use: "publish --home DIR --topic T --action SCOPE [--body JSON]", Short: "Publish a signed message to a topic", Args: exactArgs(0),
	}, func(cmd *cobra.Command, _ []string, c *localClient) error {
		if body == "" {
			body = "{}"
		}
		if !json.Valid([]byte(body)) {
			return usagef("--body is not valid JSON")
		}
		return c.call(cmd.Context(), "POST", "/v1/publish", map[string]any{"topic": topic, "action": act, "body": json.RawMessage(body)}, cmd.OutOrStdout())
	}, "topic", "action")
	publish.Flags().StringVar(&topic, "topic", "", "topic")
	publish.Flags().StringVar(&act, "action", "", "action (scope) the message exercises")
	publish.Flags().StringVar(&body, "body", "", "JSON body")

	subscribe := clientCommand(&cobra.Command{
		Use: "subscribe --home DIR --topic T [--count N]", Short: "Print verified messages of a topic as JSON lines", Args: exactArgs(0),
	}, func(cmd *cobra.Command, _ []string, c *localClient) error {
		seen := 0
		return c.events(cmd.Context(), "/v1/subscribe?topic="+url.QueryEscape(topic), func(d []byte) (bool, error) {
			fmt.Fprintln(cmd.OutOrStdout(), string(d))
			seen++
			return count == 0 || seen < count, nil
		})
	}, "topic")
	subscribe.Flags().StringVar(&topic, "topic", "", "topic")
	subscribe.Flags().IntVar(&count, "count", 0, "exit after N messages (0: run until interrupted)")

	handle := clientCommand(&cobra.Command{
		Use:   "handle --home DIR --action SCOPE [--description TEXT] [--input-schema JSON] [--count N] -- CMD [ARGS]",
		Short: "Serve an action: run CMD once per verified request, body on stdin, reply from stdout",
	}, func(cmd *cobra.Command, args []string, c *localClient) error {
		if len(args) == 0 {
			return usagef("handle: give the command to run after --")
		}
		served := 0
		q := advertQuery(url.Values{"action": {act}}, description, json.RawMessage(inputSchema))
		return c.events(cmd.Context(), "/v1/handle?"+q.Encode(), func(d []byte) (bool, error) {
			var ev struct {
				ID   string          `json:"id"`
				Body json.RawMessage `json:"body"`
			}
			if err := json.Unmarshal(d, &ev); err != nil {
				return false, err
			}
			proc := exec.CommandContext(cmd.Context(), args[0], args[1:]...)
			proc.Stdin = bytes.NewReader(ev.Body)
			var stderr bytes.Buffer
			proc.Stderr = &stderr
			out, err := proc.Output()
			reply := map[string]any{"id": ev.ID}
			switch {
			case err != nil:
				reply["error"] = strings.TrimSpace(fmt.Sprintf("%v: %s", err, stderr.String()))
			case json.Valid(out):
				reply["body"] = json.RawMessage(out)
			default:
				reply["body"] = string(out)
			}
			if err := c.call(cmd.Context(), "POST", "/v1/reply", reply, io.Discard); err != nil {
				return false, err
			}
			served++
			return count == 0 || served < count, nil
		})
	}, "action")
	handle.Flags().StringVar(&act, "action", "", "action (scope) to serve")
	handle.Flags().IntVar(&count, "count", 0, "exit after N requests (0: run until interrupted)")
	handle.Flags().StringVar(&description, "description", "", "one line advertised with the action")
	handle.Flags().StringVar(&inputSchema, "input-schema", "", "JSON Schema (an object) of the request body, advertised with the action")
	return []*cobra.Command{publish, subscribe, handle}
}
