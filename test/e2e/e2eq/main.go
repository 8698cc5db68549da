// Command e2eq reads one JSON value on stdin and prints the values at the
// paths given as arguments, one line each, for test/e2e/run.sh (which must
// not depend on jq). A path is dot-separated: an object key, an array
// index, or [KEY=VALUE] for the element of an array whose KEY is VALUE;
// a trailing "|unix" turns an RFC 3339 time into Unix seconds. Strings
// print bare, other values as JSON, a path that leads nowhere as "-".
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

func main() {
	data, err := io.ReadAll(io.LimitReader(os.Stdin, 64<<20))
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2eq:", err)
		os.Exit(2)
	}
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		fmt.Fprintln(os.Stderr, "e2eq: stdin is not JSON:", err)
		os.Exit(2)
	}
	for _, p := range os.Args[1:] {
		fmt.Println(query(v, p))
	}
}

// query returns what path p selects in v, as a line.
func query(v any, p string) string {
	p, unix := strings.CutSuffix(p, "|unix")
	for seg := range strings.SplitSeq(p, ".") {
		if seg == "" {
			continue
		}
		v = step(v, seg)
		if v == nil {
			return "-"
		}
	}
	switch x := v.(type) {
	case string:
		if unix {
			t, err := time.Parse(time.RFC3339, x)
			if err != nil {
				return "-"
			}
			return strconv.FormatInt(t.Unix(), 10)
		}
		return x
	default:
		b, _ := json.Marshal(x)
		return string(b)
	}
}

// step follows one path segment, or returns nil.
func step(v any, seg string) any {
	switch x := v.(type) {
	case map[string]any:
		return x[seg]
	case []any:
		if k, want, ok := strings.Cut(strings.TrimSuffix(strings.TrimPrefix(seg, "["), "]"), "="); ok && strings.HasPrefix(seg, "[") {
			for _, e := range x {
				if m, ok := e.(map[string]any); ok && fmt.Sprint(m[k]) == want {
					return m
				}
			}
			return nil
		}
		if i, err := strconv.Atoi(seg); err == nil && i >= 0 && i < len(x) {
			return x[i]
		}
	}
	return nil
}
