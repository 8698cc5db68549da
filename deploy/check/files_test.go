package check

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// The final stage of the Dockerfile has no shell: distroless/static or
// scratch, no RUN, exec-form ENTRYPOINT and CMD, and a non-root USER;
// the build stage makes a static, trimmed, stamped binary.
func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(deployDir, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	type instr struct{ op, args string }
	var stages [][]instr
	sc := bufio.NewScanner(bytes.NewReader(data))
	var cont string
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasSuffix(l, "\\") {
			cont += strings.TrimSuffix(l, "\\") + " "
			continue
		}
		l, cont = cont+l, ""
		op, args, _ := strings.Cut(l, " ")
		op = strings.ToUpper(op)
		if op == "FROM" {
			stages = append(stages, nil)
		}
		if len(stages) == 0 {
			t.Fatalf("%q before the first FROM", l)
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], instr{op, strings.TrimSpace(args)})
	}
	if len(stages) < 2 {
		t.Fatalf("%d stages: want a build stage and a final one", len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]
	var buildRun string
	for _, in := range build {
		if in.op == "RUN" {
			buildRun += in.args + "\n"
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-X main.version=", "-X main.revision=", "./cmd/meshagent"} {
		if !strings.Contains(buildRun, want) {
			t.Errorf("the build stage's RUN does not say %q", want)
		}
	}
	base := strings.Fields(final[0].args)[0]
	if base != "scratch" && !strings.HasPrefix(base, "gcr.io/distroless/static") {
		t.Errorf("final stage FROM %s: want scratch or gcr.io/distroless/static (no shell)", base)
	}
	user := ""
	for _, in := range final {
		switch in.op {
		case "RUN", "SHELL":
			t.Errorf("final stage: %s %s needs a shell", in.op, in.args)
		case "ENTRYPOINT", "CMD":
			if !strings.HasPrefix(in.args, "[") {
				t.Errorf("final stage: %s %s: shell form needs /bin/sh; use the exec form [\"...\"]", in.op, in.args)
			}
		case "HEALTHCHECK":
			if !strings.Contains(in.args, "CMD [") {
				t.Errorf("final stage: HEALTHCHECK %s: shell form", in.args)
			}
		case "USER":
			user = in.args
		}
	}
	if name, _, _ := strings.Cut(user, ":"); name == "" || name == "root" || name == "0" {
		t.Errorf("final stage: USER %q: want a non-root user", user)
	}
}

// readYAML decodes every document of path.
func readYAML(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	var docs []map[string]any
	for {
		var d map[string]any
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		docs = append(docs, d)
	}
	return docs
}

// at walks v along keys (map keys, or list indexes as ints).
func at(v any, keys ...any) any {
	for _, k := range keys {
		switch x := v.(type) {
		case map[string]any:
			v = x[k.(string)]
		case []any:
			i, ok := k.(int)
			if !ok || i >= len(x) {
				return nil
			}
			v = x[i]
		default:
			return nil
		}
	}
	return v
}

func strs(v any) []string {
	var out []string
	l, _ := v.([]any)
	for _, x := range l {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}

// The compose file: an issuer, three agents and Prometheus; daemons run
// unprivileged from the image, and the files they name exist.
func TestCompose(t *testing.T) {
	dir := filepath.Join(deployDir, "compose")
	docs := readYAML(t, filepath.Join(dir, "compose.yaml"))
	if len(docs) != 1 {
		t.Fatalf("%d documents", len(docs))
	}
	services, _ := docs[0]["services"].(map[string]any)
	for _, name := range []string{"anchor", "alice", "bob", "carol"} {
		s, _ := services[name].(map[string]any)
		if s == nil {
			t.Errorf("no service %s", name)
			continue
		}
		if u, _ := s["user"].(string); u == "" || strings.HasPrefix(u, "0") || strings.HasPrefix(u, "root") {
			t.Errorf("%s: user %q", name, u)
		}
		if s["read_only"] != true || !slices.Contains(strs(s["cap_drop"]), "ALL") {
			t.Errorf("%s: want read_only and cap_drop ALL", name)
		}
		if cmd := strs(s["command"]); len(cmd) < 3 || cmd[0] != "run" {
			t.Errorf("%s: command %v", name, cmd)
		}
		if hc := strs(at(s, "healthcheck", "test")); len(hc) == 0 || hc[0] != "CMD" {
			t.Errorf("%s: healthcheck %v: the image has no shell for CMD-SHELL", name, hc)
		}
		home := false
		for _, v := range strs(s["volumes"]) {
			home = home || strings.HasSuffix(v, ":/var/lib/meshagent")
		}
		if !home {
			t.Errorf("%s: no home mounted at /var/lib/meshagent", name)
		}
		if ctx, _ := at(s, "build", "context").(string); ctx != "../.." || at(s, "build", "dockerfile") != "deploy/Dockerfile" {
			t.Errorf("%s: build %v", name, s["build"])
		}
	}
	prom, _ := services["prometheus"].(map[string]any)
	if prom == nil {
		t.Fatal("no service prometheus")
	}
	for _, v := range strs(prom["volumes"]) {
		src, _, _ := strings.Cut(v, ":")
		if _, err := os.Stat(filepath.Join(dir, src)); err != nil {
			t.Errorf("prometheus mounts %s: %v", src, err)
		}
	}
	// Prometheus scrapes each daemon's metrics_listen and loads the rules.
	pc := readYAML(t, filepath.Join(deployDir, "prometheus", "prometheus.yml"))[0]
	if !slices.Contains(strs(pc["rule_files"]), "/etc/prometheus/alerts.yml") {
		t.Errorf("prometheus.yml rule_files %v", pc["rule_files"])
	}
	targets := strs(at(pc, "scrape_configs", 0, "static_configs", 0, "targets"))
	for _, name := range []string{"anchor", "alice", "bob", "carol"} {
		if !slices.Contains(targets, name+":9464") {
			t.Errorf("prometheus.yml does not scrape %s:9464: %v", name, targets)
		}
	}
}

// setup.sh, run with a docker that runs the meshagent binary built here
// instead, makes the homes: so the commands and flags it uses are the
// CLI's, and the configs it writes use only the config's fields.
func TestComposeSetup(t *testing.T) {
	bin := meshagentBinary(t)
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	work := t.TempDir()
	script, err := os.ReadFile(filepath.Join(deployDir, "compose", "setup.sh"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "setup.sh"), script, 0o755); err != nil {
		t.Fatal(err)
	}
	fakeBin := filepath.Join(work, "fakebin")
	if err := os.Mkdir(fakeBin, 0o755); err != nil {
		t.Fatal(err)
	}
	// docker compose build: nothing; docker run --rm --user U -v H:/mesh
	// IMAGE ARGS: the binary, with /mesh in ARGS made H.
	fake := `#!/usr/bin/env bash
set -euo pipefail
[ "$1" = compose ] && exit 0
[ "$1" = run ] || { echo "fake docker: $*" >&2; exit 1; }
shift; host=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rm) shift;;
    --user) shift 2;;
    -v) host="${2%%:/mesh}"; shift 2;;
    *) break;;
  esac
done
shift # the image
args=(); for a in "$@"; do args+=("${a//\/mesh/$host}"); done
exec ` + bin + ` "${args[@]}"
`
	if err := os.WriteFile(filepath.Join(fakeBin, "docker"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", filepath.Join(work, "setup.sh"))
	cmd.Env = append(os.Environ(), "PATH="+fakeBin+string(os.PathListSeparator)+os.Getenv("PATH"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("setup.sh: %v\n%s", err, out)
	}
	// The fields a config may have: those of the config init writes,
	// where each is listed, set or commented out.
	probe := filepath.Join(work, "probe")
	if out, err := exec.Command(bin, "init", "--home", probe, "--name", "probe").CombinedOutput(); err != nil {
		t.Fatalf("init: %v %s", err, out)
	}
	def, err := os.ReadFile(filepath.Join(probe, "meshagent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^#? ?([a-z_]+):`).FindAllStringSubmatch(string(def), -1) {
		known[m[1]] = true
	}
	if len(known) < 10 {
		t.Fatalf("only %d fields in the default config: %v", len(known), known)
	}
	for _, name := range []string{"anchor", "alice", "bob", "carol"} {
		home := filepath.Join(work, "mesh", name)
		for _, f := range []string{"identity.key", "credential.pem", "agent.token", "meshagent.yaml"} {
			st, err := os.Stat(filepath.Join(home, f))
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm()&0o077 != 0 {
				t.Errorf("%s/%s: mode %v", name, f, st.Mode().Perm())
			}
		}
		cfg := readYAML(t, filepath.Join(home, "meshagent.yaml"))[0]
		for k := range cfg {
			if !known[k] {
				t.Errorf("%s: config field %q is not one of meshagent's", name, k)
			}
		}
		if cfg["metrics_listen"] != "0.0.0.0:9464" {
			t.Errorf("%s: metrics_listen %v: Prometheus scrapes :9464", name, cfg["metrics_listen"])
		}
		if name != "anchor" {
			if b := strs(cfg["bootstrap"]); len(b) != 1 || !regexp.MustCompile(`^/dns4/anchor/tcp/4001/p2p/12D3KooW\w+$`).MatchString(b[0]) {
				t.Errorf("%s: bootstrap %v", name, b)
			}
		}
	}
}

// The Kubernetes example: the daemon and the agent share the API socket
// through an emptyDir, the agent never mounts the home, the probes are
// /healthz and /readyz on metrics_listen, and nothing runs as root.
func TestKubernetesSidecar(t *testing.T) {
	docs := readYAML(t, filepath.Join(deployDir, "kubernetes", "sidecar.yaml"))
	var config map[string]any
	var pod map[string]any
	for _, d := range docs {
		switch d["kind"] {
		case "ConfigMap":
			raw, _ := at(d, "data", "meshagent.yaml").(string)
			if err := yaml.Unmarshal([]byte(raw), &config); err != nil {
				t.Fatalf("the ConfigMap's meshagent.yaml: %v", err)
			}
		case "StatefulSet", "Deployment":
			pod, _ = at(d, "spec", "template", "spec").(map[string]any)
		}
	}
	for _, d := range docs {
		if d["kind"] == "Service" && at(d, "spec", "publishNotReadyAddresses") != true {
			t.Errorf("Service %v: publishNotReadyAddresses is not true: daemons bootstrapping by DNS would not find one not ready yet", at(d, "metadata", "name"))
		}
	}
	if config == nil || pod == nil {
		t.Fatal("want a ConfigMap with meshagent.yaml and a StatefulSet")
	}
	if at(pod, "securityContext", "runAsNonRoot") != true {
		t.Error("pod: runAsNonRoot is not true")
	}
	emptyDirs := map[string]bool{}
	for _, v := range at(pod, "volumes").([]any) {
		if at(v, "emptyDir") != nil {
			emptyDirs[at(v, "name").(string)] = true
		}
	}
	containers := map[string]any{}
	for _, c := range at(pod, "containers").([]any) {
		containers[at(c, "name").(string)] = c
		if at(c, "securityContext", "allowPrivilegeEscalation") != false {
			t.Errorf("container %v: allowPrivilegeEscalation is not false", at(c, "name"))
		}
	}
	daemon, agent := containers["meshagent"], containers["agent"]
	if daemon == nil || agent == nil {
		t.Fatalf("want containers meshagent and agent: %v", containers)
	}
	mounts := func(c any) map[string]string { // volume -> path
		m := map[string]string{}
		for _, vm := range at(c, "volumeMounts").([]any) {
			m[at(vm, "name").(string)] = at(vm, "mountPath").(string)
		}
		return m
	}
	dm, am := mounts(daemon), mounts(agent)
	sock, _ := config["api_socket"].(string)
	shared := ""
	for vol, p := range dm {
		if emptyDirs[vol] && am[vol] == p && strings.HasPrefix(sock, p+"/") {
			shared = vol
		}
	}
	if shared == "" {
		t.Errorf("api_socket %q is in no emptyDir both containers mount at the same path (daemon %v, agent %v)", sock, dm, am)
	}
	for vol := range am {
		if vol != shared {
			t.Errorf("the agent mounts %s too: it should see the socket only", vol)
		}
	}
	for _, e := range at(agent, "env").([]any) {
		if at(e, "name") == "MESHAGENT_API_SOCKET" && at(e, "value") != sock {
			t.Errorf("agent's MESHAGENT_API_SOCKET %v, api_socket %q", at(e, "value"), sock)
		}
	}
	port := ""
	for _, p := range at(daemon, "ports").([]any) {
		if at(p, "name") == "metrics" {
			port = yamlString(at(p, "containerPort"))
		}
	}
	if ml, _ := config["metrics_listen"].(string); port == "" || !strings.HasSuffix(ml, ":"+port) {
		t.Errorf("metrics_listen %q, containerPort metrics %q", ml, port)
	}
	if at(daemon, "livenessProbe", "httpGet", "path") != "/healthz" || at(daemon, "readinessProbe", "httpGet", "path") != "/readyz" {
		t.Errorf("probes: liveness %v, readiness %v", at(daemon, "livenessProbe"), at(daemon, "readinessProbe"))
	}
}

func yamlString(v any) string {
	b, _ := yaml.Marshal(v)
	return strings.TrimSpace(string(b))
}

// The systemd unit is hardened, and systemd-analyze verify finds nothing
// to say about it (where systemd-analyze is installed).
func TestSystemdUnit(t *testing.T) {
	path := filepath.Join(deployDir, "systemd", "meshagent.service")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ProtectSystem=strict", "NoNewPrivileges=yes", "StateDirectory=meshagent", "StateDirectoryMode=0700",
		"ProtectHome=yes", "PrivateTmp=yes", "CapabilityBoundingSet=\n", "User=meshagent", "ExecStart=/usr/local/bin/meshagent run --home /var/lib/meshagent"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("the unit does not say %q", strings.TrimSpace(want))
		}
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed: only the unit's settings were checked")
	}
	// verify wants the ExecStart binary to exist: the one built here.
	unit := filepath.Join(t.TempDir(), "meshagent.service")
	fixed := strings.ReplaceAll(string(data), "/usr/local/bin/meshagent", meshagentBinary(t))
	if err := os.WriteFile(unit, []byte(fixed), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", unit).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	// Exposure 1.3 of 10 ("OK") when this was written; fail above 2.0.
	out, err = exec.Command(analyze, "security", "--offline=true", "--threshold=20", unit).CombinedOutput()
	if err != nil {
		t.Errorf("systemd-analyze security: %v\n%s", err, out)
	} else if l := regexp.MustCompile(`Overall exposure level for .*`).Find(out); l != nil {
		t.Logf("%s", l)
	}
}
