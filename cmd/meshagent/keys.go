package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshagent/meshagent/trust"
	"github.com/spf13/cobra"
)

// Files in an agent's home directory and in a CA directory.
const (
	identityFile   = "identity.key"
	anchorKeyFile  = "anchor.key"
	anchorIDFile   = "anchor.id"
	configFile     = "meshagent.yaml"
	credentialFile = "credential.pem"
)

func newInitCmd() *cobra.Command {
	var home, name string
	cmd := &cobra.Command{
		Use:   "init --home DIR --name NAME",
		Short: "Create a new agent identity (and a default config) in DIR; prints its peer ID",
		Args:  exactArgs(0),
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			if err := trust.ValidateName(name); err != nil {
				return usagef("--name: %v", err)
			}
			if err := os.MkdirAll(home, 0o700); err != nil {
				return err
			}
			id, err := trust.GenerateIdentity(randReader())
			if err != nil {
				return err
			}
			if err := id.Save(filepath.Join(home, identityFile)); err != nil {
				return err
			}
			if err := writeDefaultConfig(filepath.Join(home, configFile), name); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), id.PeerID())
			return nil
		}),
	}
	cmd.Flags().StringVar(&home, "home", "", "agent home directory (created with mode 0700)")
	cmd.Flags().StringVar(&name, "name", "", "agent name, 1-64 characters of [A-Za-z0-9._-]")
	required(cmd, "home", "name")
	return cmd
}

func newIDCmd() *cobra.Command {
	var home string
	cmd := &cobra.Command{
		Use:   "id --home DIR",
		Short: "Print the agent's peer ID",
		Args:  exactArgs(0),
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			id, err := trust.LoadIdentity(filepath.Join(home, identityFile))
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), id.PeerID())
			return nil
		}),
	}
	cmd.Flags().StringVar(&home, "home", "", "agent home directory")
	required(cmd, "home")
	return cmd
}

func newCACmd() *cobra.Command {
	ca := &cobra.Command{Use: "ca", Short: "Manage a trust anchor: credentials and revocations"}

	var dir string
	initCmd := &cobra.Command{
		Use:   "init --dir CADIR",
		Short: "Create a new anchor key in CADIR; prints the anchor ID",
		Args:  exactArgs(0),
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			a, err := trust.GenerateAnchorKey(randReader())
			if err != nil {
				return err
			}
			if err := a.Save(filepath.Join(dir, anchorKeyFile)); err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(dir, anchorIDFile), []byte(a.Public().String()+"\n"), 0o644); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), a.Public())
			return nil
		}),
	}
	initCmd.Flags().StringVar(&dir, "dir", "", "CA directory (created with mode 0700)")
	required(initCmd, "dir")

	var agent, name, out string
	var ttl time.Duration
	issue := &cobra.Command{
		Use:   "issue --dir CADIR --agent PEERID --name NAME [--ttl 24h] --out FILE",
		Short: "Sign a credential (the agent's certificate)",
		Args:  exactArgs(0),
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			a, err := trust.LoadAnchorKey(filepath.Join(dir, anchorKeyFile))
			if err != nil {
				return err
			}
			sub, err := parseKeyFlag("agent", agent)
			if err != nil {
				return err
			}
			if err := trust.ValidateName(name); err != nil {
				return usagef("--name: %v", err)
			}
			c, err := trust.IssueCredential(a, sub, name, time.Now(), ttl)
			if err != nil {
				return err
			}
			return trust.WriteFileExclusive(out, trust.EncodePEM(c.Bytes(), trust.PEMCredential), 0o600)
		}),
	}
	issue.Flags().StringVar(&dir, "dir", "", "CA directory")
	issue.Flags().StringVar(&agent, "agent", "", "the agent's peer ID")
	issue.Flags().StringVar(&name, "name", "", "the agent's name")
	issue.Flags().DurationVar(&ttl, "ttl", trust.DefaultCredentialTTL, "lifetime")
	issue.Flags().StringVar(&out, "out", "", "output file (must not exist; written 0600)")
	required(issue, "dir", "agent", "name", "out")

	inspect := &cobra.Command{
		Use:   "inspect FILE",
		Short: "Decode a credential without any key and print it as JSON, serial included (nothing is verified)",
		Args:  exactArgs(1),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			b, err := readPEMFile(args[0], trust.PEMCredential, trust.MaxCredentialSize)
			if err != nil {
				return err
			}
			c, err := trust.ParseCredential(b)
			if err != nil {
				return err
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(c.Info())
		}),
	}

	var linkID, serial, before string
	var keep time.Duration
	revoke := &cobra.Command{
		Use:   "revoke --dir CADIR (--token LINKID | --credential SERIAL | --agent PEERID) --out FILE",
		Short: "Sign a revocation of one token link, of one credential, or of everything an agent held or issued",
		Long: `Sign a revocation of exactly one thing; 'meshagent revoke' then spreads it to the mesh.

  --token LINKID       one token link, and every chain built on it: the "id" of that
                       link as 'meshagent token inspect TOKENFILE' prints it
  --credential SERIAL  one credential (agent certificate): its "serial" as
                       'meshagent ca inspect CREDFILE' prints it
  --agent PEERID       every credential and link the agent held or issued before --before
                       (a compromised key); --before defaults to a week from now, the
                       longest credential lifetime, so that a renewal an issuer serves
                       before the revocation reaches it is revoked too

A link ID never matches a credential serial, nor the other way round.`,
		Args: exactArgs(0),
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			n := 0
			for _, v := range []string{linkID, serial, agent} {
				if v != "" {
					n++
				}
			}
			if n != 1 {
				return usagef("ca revoke: give exactly one of --token LINKID, --credential SERIAL or --agent PEERID")
			}
			a, err := trust.LoadAnchorKey(filepath.Join(dir, anchorKeyFile))
			if err != nil {
				return err
			}
			now := time.Now()
			var r *trust.Revocation
			switch {
			case linkID != "":
				id, err := trust.ParseLinkID(linkID)
				if err != nil {
					return usagef("--token: %v", err)
				}
				if r, err = trust.RevokeLink(a, id, now, keep); err != nil {
					return err
				}
			case serial != "":
				sn, err := trust.ParseSerial(serial)
				if err != nil {
					return usagef("--credential: %v", err)
				}
				if r, err = trust.RevokeCredential(a, sn, now, keep); err != nil {
					return err
				}
			default:
				k, err := parseKeyFlag("agent", agent)
				if err != nil {
					return err
				}
				// By default a week ahead (the longest credential lifetime):
				// a renewal an issuer serves before the revocation reaches it
				// gets a later not-before, and must not escape it.
				b := now.Add(trust.DefaultPolicy().MaxCredentialLifetime)
				if before != "" {
					if b, err = time.Parse(time.RFC3339, before); err != nil {
						return usagef("--before: not an RFC 3339 time: %q", before)
					}
				}
				if r, err = trust.RevokeAgent(a, k, b, now, keep); err != nil {
					return err
				}
			}
			return trust.WriteFileExclusive(out, trust.EncodePEM(r.Bytes(), trust.PEMRevocation), 0o600)
		}),
	}
	revoke.Flags().StringVar(&dir, "dir", "", "CA directory")
	revoke.Flags().StringVar(&linkID, "token", "", `ID of the token link to revoke (an "id" from 'meshagent token inspect')`)
	revoke.Flags().StringVar(&serial, "credential", "", `serial of the credential to revoke (the "serial" from 'meshagent ca inspect')`)
	revoke.Flags().StringVar(&agent, "agent", "", "peer ID of the agent whose key is compromised")
	revoke.Flags().StringVar(&before, "before", "", "with --agent: revoke what was issued before this RFC 3339 time (default: a week from now, so that no renewal escapes it)")
	revoke.Flags().DurationVar(&keep, "keep", trust.DefaultMaxTokenLife, "how long nodes remember it; at least the mesh's longest token lifetime")
	revoke.Flags().StringVar(&out, "out", "", "output file (must not exist)")
	required(revoke, "dir", "out")

	ca.AddCommand(initCmd, issue, inspect, revoke)
	return ca
}

func parseKeyFlag(flag, v string) (trust.PublicKey, error) {
	k, err := trust.ParsePublicKey(v)
	if err != nil {
		return k, usagef("--%s: %v", flag, err)
	}
	return k, nil
}

func splitList(s string) []string {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	var out []string
	for _, p := range strings.Split(s, ",") {
		out = append(out, strings.TrimSpace(p))
	}
	return out
}

// readPEMFile reads a file holding one PEM block of type typ (or raw bytes).
func readPEMFile(path, typ string, max int) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Size() > int64(2*max+1024) {
		return nil, fmt.Errorf("%s is %d bytes, too large for a %s", path, st.Size(), strings.ToLower(typ))
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b, err := trust.DecodePEM(data, typ)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}
