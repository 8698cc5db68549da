package main

import (
	"context"
	"io"
	"net/http"
	"testing"
)

// apiCall does one request to the local API of the daemon at home, as the
// CLI does, and copies the answer to out.
func apiCall(home, method, path string, in any, out io.Writer) error {
	c, err := newLocalClient(home)
	if err != nil {
		return err
	}
	return c.call(context.Background(), method, path, in, out)
}

// events streams path from the local API of the daemon at home, as the
// CLI does (see localClient.events).
func events(ctx context.Context, home, path string, f func(data []byte) (bool, error)) error {
	c, err := newLocalClient(home)
	if err != nil {
		return err
	}
	return c.events(ctx, path, f)
}

// apiHTTP is an HTTP client of the local API of the daemon at home, for
// requests the CLI does not make.
func apiHTTP(t *testing.T, home string) *http.Client {
	t.Helper()
	c, err := newLocalClient(home)
	if err != nil {
		t.Fatal(err)
	}
	return c.http
}
