package main

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/meshagent/meshagent/trust"
	"github.com/spf13/cobra"
)

func randReader() io.Reader { return rand.Reader }

func loadToken(path string) (*trust.Token, error) {
	b, err := readPEMFile(path, trust.PEMToken, trust.DefaultMaxTokenSize)
	if err != nil {
		return nil, err
	}
	return trust.ParseToken(b, trust.DefaultMaxTokenSize)
}

// tokenVerdict is what `token verify` and the console's token inspector
// decide of t under v at now: with an action, whether holder (t's own
// holder when nil) may use t for it; else whether t's chain is valid and,
// when holder is not nil, held by holder. nil means valid; a *trust.Error
// names the failing check.
func tokenVerdict(v *trust.Verifier, t *trust.Token, holder *trust.PublicKey, action string, now time.Time) error {
	switch {
	case action != "":
		h := t.Holder()
		if holder != nil {
			h = *holder
		}
		return v.Authorize(t, h, action, now)
	case holder != nil:
		if err := v.VerifyChain(t, now); err != nil {
			return err
		}
		if !t.Holder().Equal(*holder) {
			return &trust.Error{Code: trust.CodeNotHolder, Link: len(t.Links) - 1, Detail: fmt.Sprintf("token is held by %s", t.Holder())}
		}
		return nil
	}
	return v.VerifyChain(t, now)
}

// verdictText is a verdict of tokenVerdict as `token verify` prints it:
// "valid", or "invalid: REASON_CODE: detail".
func verdictText(err error) string {
	if err == nil {
		return "valid"
	}
	return "invalid: " + err.Error()
}

func newTokenCmd() *cobra.Command {
	tc := &cobra.Command{Use: "token", Short: "Issue, delegate, inspect and verify capability tokens"}

	var caDir, to, scopes, delegatable, out, home, tokenFile string
	var ttl time.Duration
	var viaDaemon bool
	issue := &cobra.Command{
		Use:   "issue --ca CADIR --to PEERID --scopes read:logs,write:reports [--delegatable read:logs] [--ttl 1h] --out FILE",
		Short: "Issue a root token signed by the anchor",
		Args:  exactArgs(0),
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			a, err := trust.LoadAnchorKey(filepath.Join(caDir, anchorKeyFile))
			if err != nil {
				return err
			}
			k, err := parseKeyFlag("to", to)
			if err != nil {
				return err
			}
			now := time.Now()
			t, err := trust.IssueToken(a, k, trust.Grant{Scopes: splitList(scopes), Delegatable: splitList(delegatable), Expires: now.Add(ttl)}, now)
			if err != nil {
				return err
			}
			return trust.WriteFileExclusive(out, trust.EncodePEM(t.Bytes(), trust.PEMToken), 0o600)
		}),
	}
	issue.Flags().StringVar(&caDir, "ca", "", "CA directory")
	issue.Flags().StringVar(&to, "to", "", "holder's peer ID")
	issue.Flags().StringVar(&scopes, "scopes", "", "comma-separated verb:resource scopes")
	issue.Flags().StringVar(&delegatable, "delegatable", "", "comma-separated subset of --scopes the holder may delegate")
	issue.Flags().DurationVar(&ttl, "ttl", trust.DefaultTokenTTL, "lifetime")
	issue.Flags().StringVar(&out, "out", "", "output file (must not exist; written 0600)")
	required(issue, "ca", "to", "scopes", "out")

	delegate := &cobra.Command{
		Use:   "delegate --home DIR --token FILE --to PEERID --scopes read:logs [--delegatable ...] [--ttl 30m] --out FILE",
		Short: "Delegate a subset of a token you hold; refuses to widen scopes or expiry",
		Args:  exactArgs(0),
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			if viaDaemon {
				return delegateViaDaemon(cmd.Context(), home, tokenFile, to, scopes, delegatable, ttl, out)
			}
			id, err := trust.LoadIdentity(filepath.Join(home, identityFile))
			if err != nil {
				return err
			}
			t, err := loadToken(tokenFile)
			if err != nil {
				return err
			}
			k, err := parseKeyFlag("to", to)
			if err != nil {
				return err
			}
			now := time.Now()
			nt, err := t.Delegate(id, k, trust.Grant{Scopes: splitList(scopes), Delegatable: splitList(delegatable), Expires: now.Add(ttl)}, now)
			if err != nil {
				return fmt.Errorf("refused: %w", err)
			}
			return trust.WriteFileExclusive(out, trust.EncodePEM(nt.Bytes(), trust.PEMToken), 0o600)
		}),
	}
	delegate.Flags().StringVar(&home, "home", "", "home of the agent that holds the token")
	delegate.Flags().StringVar(&tokenFile, "token", "", "token file to delegate from")
	delegate.Flags().StringVar(&to, "to", "", "new holder's peer ID")
	delegate.Flags().StringVar(&scopes, "scopes", "", "comma-separated scopes (a subset of the token's delegatable scopes)")
	delegate.Flags().StringVar(&delegatable, "delegatable", "", "comma-separated subset of --scopes the new holder may delegate")
	delegate.Flags().DurationVar(&ttl, "ttl", 30*time.Minute, "lifetime; may not end after the token's")
	delegate.Flags().StringVar(&out, "out", "", "output file (must not exist; written 0600)")
	delegate.Flags().BoolVar(&viaDaemon, "daemon", false, "have the running daemon of --home sign it (POST /v1/delegate): no key is read here")
	required(delegate, "home", "token", "to", "scopes", "out")

	inspect := &cobra.Command{
		Use:   "inspect FILE",
		Short: "Decode a token without any key and print it as JSON (nothing is verified)",
		Args:  exactArgs(1),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			t, err := loadToken(args[0])
			if err != nil {
				return err
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(t.Info())
		}),
	}

	var anchors []string
	var holder, act, at string
	verify := &cobra.Command{
		Use:   "verify FILE --anchor ANCHORID [--holder PEERID] [--action SCOPE] [--at RFC3339]",
		Short: `Verify a token; prints "valid" or "invalid: REASON_CODE: detail"`,
		Args:  exactArgs(1),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			p := trust.DefaultPolicy()
			for _, a := range anchors {
				k, err := parseKeyFlag("anchor", a)
				if err != nil {
					return err
				}
				p.Anchors = append(p.Anchors, k)
			}
			v, err := trust.NewVerifier(p)
			if err != nil {
				return err
			}
			now := time.Now()
			if at != "" {
				if now, err = time.Parse(time.RFC3339, at); err != nil {
					return usagef("--at: not an RFC 3339 time: %q", at)
				}
			}
			var h *trust.PublicKey
			if holder != "" {
				k, err := parseKeyFlag("holder", holder)
				if err != nil {
					return err
				}
				h = &k
			}
			t, err := loadToken(args[0])
			if err == nil {
				err = tokenVerdict(v, t, h, act, now)
			}
			if err != nil {
				if trust.CodeOf(err) == "" {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), verdictText(err))
				return failure{fmt.Errorf("token is invalid: %s", trust.CodeOf(err))}
			}
			fmt.Fprintln(cmd.OutOrStdout(), verdictText(nil))
			return nil
		}),
	}
	verify.Flags().StringSliceVar(&anchors, "anchor", nil, "trusted anchor ID (repeatable)")
	verify.Flags().StringVar(&holder, "holder", "", "the agent presenting the token")
	verify.Flags().StringVar(&act, "action", "", "the action it must authorize")
	verify.Flags().StringVar(&at, "at", "", "verify at this RFC 3339 time instead of now")
	required(verify, "anchor")

	tc.AddCommand(issue, delegate, inspect, verify)
	return tc
}
