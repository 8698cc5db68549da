package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/meshagent/meshagent/trust"
)

// loadRevocations reads the revocations persisted in dir and returns those
// that apply under policy (its anchors) at now, so that the node is only
// ever given revocations it accepts. A file it leaves out (not a revocation,
// a format this version no longer reads, an issuer that is no longer a
// trusted anchor, a bad signature, expired) is named on logw with the
// reason, one line each, and left on disk: the operator decides. An error
// reading the directory or a file stops the daemon: a revocation it could
// not read may be one that applies.
func loadRevocations(dir string, policy trust.Policy, now time.Time, logw io.Writer) ([][]byte, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	// A scratch verifier with the configured anchors checks each one as
	// the node will, without touching the node.
	scratch, err := trust.NewVerifier(policy)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for _, e := range entries {
		if e.IsDir() || filepath.Ext(e.Name()) != ".pem" {
			continue
		}
		path := filepath.Join(dir, e.Name())
		if !e.Type().IsRegular() {
			fmt.Fprintf(logw, "meshagent: dropped revocation %s: not a regular file\n", path)
			continue
		}
		const max = 2*trust.MaxRevocationSize + 1024 // base64 and PEM lines
		data, err := readLimited(path, max)
		if err != nil {
			return nil, err
		}
		why := ""
		var raw []byte
		var r *trust.Revocation
		if len(data) > max {
			err = fmt.Errorf("over %d bytes", max)
		} else if raw, err = trust.DecodePEM(data, trust.PEMRevocation); err == nil {
			r, err = trust.ParseRevocation(raw)
		}
		switch {
		case err != nil:
			why = fmt.Sprintf("it no longer parses (%v)", err)
		case !scratch.IsAnchor(r.Issuer):
			why = fmt.Sprintf("issuer %s is no longer a trusted anchor", r.Issuer)
		case !now.Before(scratch.KeepUntil(r)):
			// AddRevocation would accept it and keep nothing.
			if err := scratch.AddRevocation(r, now); err != nil {
				why = fmt.Sprintf("it does not verify (%v)", err)
			} else {
				why = fmt.Sprintf("it expired at %s (what it revoked has expired too)", scratch.KeepUntil(r).UTC().Format(time.RFC3339))
			}
		default:
			if err := scratch.AddRevocation(r, now); err != nil {
				if trust.CodeOf(err) == trust.CodeFull {
					return nil, fmt.Errorf("%s: %v", path, err)
				}
				why = fmt.Sprintf("it does not verify (%v)", err)
			}
		}
		if why != "" {
			fmt.Fprintf(logw, "meshagent: dropped revocation %s: %s\n", path, why)
			continue
		}
		out = append(out, raw)
	}
	return out, nil
}

// readLimited reads at most max+1 bytes of path.
func readLimited(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return data, nil
}

// saveRevocation persists one revocation, named by its hash.
func saveRevocation(dir string, raw []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	sum := sha256.Sum256(raw)
	path := filepath.Join(dir, hex.EncodeToString(sum[:8])+".pem")
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	return trust.WriteFileExclusive(path, trust.EncodePEM(raw, trust.PEMRevocation), 0o600)
}
