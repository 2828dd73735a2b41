package main

import (
	"bufio"
	"cmp"
	"flag"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// The files in deploy/ are run by operators, not by these tests, so a
// renamed flag or config key would only show up in production. These tests
// read them the way tre would and fail on anything the binary would reject.

const deployDir = "../../deploy"

// composeService is the part of a compose service these tests check.
type composeService struct {
	Image       string            `yaml:"image"`
	Command     []string          `yaml:"command"`
	Entrypoint  []string          `yaml:"entrypoint"`
	Environment map[string]string `yaml:"environment"`
	Volumes     []string          `yaml:"volumes"`
	Secrets     []composeSecret   `yaml:"secrets"`
	Networks    yaml.Node         `yaml:"networks"`
	NetworkMode string            `yaml:"network_mode"`
}

type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Networks map[string]struct {
		Internal bool `yaml:"internal"`
	} `yaml:"networks"`
	Secrets map[string]struct {
		File string `yaml:"file"`
	} `yaml:"secrets"`
}

// composeSecret is a service's secret, in short (NAME) or long syntax
// ({source: NAME, target: FILE}): it appears as /run/secrets/<target>.
type composeSecret struct{ Source, Target string }

func (s *composeSecret) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		s.Source, s.Target = n.Value, n.Value
		return nil
	}
	var long struct{ Source, Target string }
	if err := n.Decode(&long); err != nil {
		return err
	}
	s.Source, s.Target = long.Source, cmp.Or(long.Target, long.Source)
	return nil
}

// isTre reports whether a service runs one of tre's images.
func (s composeService) isTre() bool {
	return strings.HasPrefix(s.Image, "tre-broker:") || strings.HasPrefix(s.Image, "tre-agent:")
}

// role is the tre subcommand a service runs ("" for none).
func (s composeService) role() string {
	if !s.isTre() || len(s.Entrypoint) > 0 || len(s.Command) == 0 {
		return ""
	}
	return s.Command[0]
}

// withDefaults replaces compose's ${VAR:-default} with its default, as an
// `up` without those variables set would.
func withDefaults(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = interpolation.ReplaceAllStringFunc(a, func(m string) string {
			_, def, _ := strings.Cut(strings.TrimSuffix(strings.TrimPrefix(m, "${"), "}"), ":-")
			return def
		})
	}
	return out
}

// networks lists a service's networks, given as a list or a mapping.
func (s composeService) networks() []string {
	var names []string
	switch s.Networks.Kind {
	case yaml.SequenceNode:
		for _, n := range s.Networks.Content {
			names = append(names, n.Value)
		}
	case yaml.MappingNode:
		for i := 0; i < len(s.Networks.Content); i += 2 {
			names = append(names, s.Networks.Content[i].Value)
		}
	}
	return names
}

func loadCompose(tb testing.TB, file string) composeFile {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join(deployDir, file))
	if err != nil {
		tb.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(data, &c); err != nil {
		tb.Fatalf("%s: %v", file, err)
	}
	if len(c.Services) == 0 {
		tb.Fatalf("%s: no services", file)
	}
	return c
}

// interpolated replaces compose's ${VAR…} with a stand-in value.
var interpolation = regexp.MustCompile(`\$\{[^}]*\}`)

// effectiveConfig runs tre's own flag, file and environment handling over
// a subcommand's arguments and returns the resulting config. hostPath maps
// a path inside the container or host to the file in deploy/.
func effectiveConfig(tb testing.TB, sub string, args []string, env map[string]string, hostPath func(string) string) (cfg interface{ Validate() error }, err error) {
	tb.Helper()
	args = slices.Clone(args)
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "--config" || args[i] == "-config" {
			args[i+1] = hostPath(args[i+1])
		}
	}
	getenv := func(k string) string { return interpolation.ReplaceAllString(env[k], "interpolated") }
	fs := flag.NewFlagSet("tre "+sub, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	switch sub {
	case "serve":
		c := DefaultServeConfig()
		checkEnvNames(tb, &c, env)
		_, err = parseConfigArgs(fs, args, &c, getenv)
		return &c, err
	case "agent":
		c := DefaultAgentConfig()
		checkEnvNames(tb, &c, env)
		_, err = parseConfigArgs(fs, args, &c, getenv)
		return &c, err
	}
	tb.Fatalf("no config for subcommand %q", sub)
	return nil, nil
}

// checkEnvNames fails on a TRE_* variable no config key reads: the loader
// would silently ignore it.
func checkEnvNames(tb testing.TB, cfg any, env map[string]string) {
	tb.Helper()
	known := map[string]bool{"TRE_CONFIG": true}
	for _, f := range configFields(cfg) {
		known["TRE_"+strings.ToUpper(f.key)] = true
	}
	for name := range env {
		if strings.HasPrefix(name, "TRE_") && !known[name] {
			tb.Errorf("environment variable %s is not a configuration key", name)
		}
	}
}

// checkSynthArgs checks `tre synth` arguments against its flags as
// CONTRACT.md lists them (synth takes no config file).
func checkSynthArgs(tb testing.TB, args []string) {
	tb.Helper()
	fs := flag.NewFlagSet("tre synth", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	for _, name := range []string{"out", "patients", "seed", "dataset"} {
		fs.String(name, "", "")
	}
	fs.Bool("force", false, "")
	if err := fs.Parse(args); err != nil {
		tb.Errorf("tre synth %s: %v", strings.Join(args, " "), err)
	}
	if fs.NArg() > 0 {
		tb.Errorf("tre synth: stray argument %q", fs.Arg(0))
	}
}

// secretPaths returns every /run/secrets/NAME a config refers to.
func secretPaths(cfg any) []string {
	var names []string
	for _, f := range configFields(cfg) {
		for _, v := range strings.Split(fieldValue{f.value}.String(), ",") {
			if name, ok := strings.CutPrefix(v, "/run/secrets/"); ok {
				names = append(names, name)
			}
		}
	}
	return names
}

func TestComposeFile(t *testing.T) {
	c := loadCompose(t, "compose.yaml")
	subcommands := map[string]bool{}
	for name, svc := range c.Services {
		if !svc.isTre() {
			t.Errorf("service %s: image %q is not one of make images' tre-broker or tre-agent", name, svc.Image)
			continue
		}
		if len(svc.Entrypoint) > 0 {
			// The registration step (deploy/register): not tre's flags.
			continue
		}
		t.Run(name, func(t *testing.T) { subcommands[checkTreService(t, c, svc)] = true })
	}
	for _, want := range []string{"serve", "agent", "synth"} {
		if !subcommands[want] {
			t.Errorf("no service runs tre %s", want)
		}
	}

	// Each agent's only peer is the broker, on networks with no route out.
	members := map[string][]string{}
	for name, svc := range c.Services {
		for _, n := range svc.networks() {
			members[n] = append(members[n], name)
		}
	}
	agents, brokers := 0, 0
	for name, svc := range c.Services {
		switch svc.role() {
		case "serve":
			brokers++
		case "agent":
			agents++
			nets := svc.networks()
			if len(nets) == 0 {
				t.Errorf("agent %s has no network", name)
			}
			for _, n := range nets {
				if !c.Networks[n].Internal {
					t.Errorf("agent %s: network %q is not internal", name, n)
				}
				for _, peer := range members[n] {
					if peer != name && c.Services[peer].role() != "serve" {
						t.Errorf("agent %s: network %q also holds %q: an agent must reach only the broker", name, n, peer)
					}
				}
			}
		}
	}
	if agents < 2 || brokers != 1 {
		t.Errorf("%d agents and %d brokers, want several sites and one broker", agents, brokers)
	}
}

// TestComposeReplicasFile checks deploy/compose.replicas.yaml: its tre
// services as TestComposeFile does; three brokers run the very same
// command and environment (one database, one configuration); the proxy
// sends to exactly those brokers on the port they listen on; the database
// and the brokers' network hold nothing else; the agent's only peer is the
// proxy.
func TestComposeReplicasFile(t *testing.T) {
	c := loadCompose(t, "compose.replicas.yaml")
	var brokers []string
	for name, svc := range c.Services {
		switch {
		case strings.HasPrefix(svc.Image, "tre-proxy:"), strings.HasPrefix(svc.Image, "tre-postgres:"):
			continue
		case !svc.isTre():
			t.Errorf("service %s: image %q is not one of make images-replicas' images", name, svc.Image)
			continue
		case len(svc.Entrypoint) > 0:
			continue // deploy/register
		}
		t.Run(name, func(t *testing.T) {
			if checkTreService(t, c, svc) == "serve" {
				brokers = append(brokers, name)
			}
		})
	}
	slices.Sort(brokers)
	if len(brokers) != 3 {
		t.Fatalf("brokers %v, want three", brokers)
	}
	first := c.Services[brokers[0]]
	for _, b := range brokers[1:] {
		svc := c.Services[b]
		if !slices.Equal(svc.Command, first.Command) || !maps.Equal(svc.Environment, first.Environment) {
			t.Errorf("%s runs %v with %v; %s runs %v with %v: replicas must be the same", b, svc.Command, svc.Environment, brokers[0], first.Command, first.Environment)
		}
	}
	if !strings.HasPrefix(first.Environment["TRE_DATABASE_URL"], "postgres://") {
		t.Errorf("brokers' TRE_DATABASE_URL %q: replicas need PostgreSQL", first.Environment["TRE_DATABASE_URL"])
	}
	addr := first.Command[slices.Index(first.Command, "--addr")+1]
	_, port, _ := strings.Cut(addr, ":")

	caddy, err := os.ReadFile(filepath.Join(deployDir, "replicas", "Caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	upstreams := regexp.MustCompile(`(?m)^\s*reverse_proxy (.+) \{$`).FindSubmatch(caddy)
	var want []string
	for _, b := range brokers {
		want = append(want, b+":"+port)
	}
	if upstreams == nil || !slices.Equal(strings.Fields(string(upstreams[1])), want) {
		t.Errorf("Caddyfile's reverse_proxy upstreams %q, want %v", upstreams, want)
	}

	members := map[string][]string{}
	for name, svc := range c.Services {
		for _, n := range svc.networks() {
			members[n] = append(members[n], name)
		}
	}
	for _, n := range first.networks() {
		if !c.Networks[n].Internal {
			t.Errorf("brokers' network %q is not internal", n)
		}
		for _, m := range members[n] {
			if !slices.Contains(brokers, m) && m != "db" && m != "proxy" {
				t.Errorf("brokers' network %q also holds %s", n, m)
			}
		}
	}
	for _, n := range c.Services["site-a"].networks() {
		if !c.Networks[n].Internal {
			t.Errorf("agent network %q is not internal", n)
		}
		for _, m := range members[n] {
			if m != "site-a" && m != "proxy" {
				t.Errorf("agent network %q also holds %s: an agent must reach only the proxy", n, m)
			}
		}
	}
}

// checkTreService runs a tre service's command through tre's own
// configuration handling: flags, file and environment must be ones tre
// accepts, the result must validate, every secret it reads must be
// mounted. It returns the subcommand.
func checkTreService(t *testing.T, c composeFile, svc composeService) string {
	t.Helper()
	if len(svc.Command) == 0 {
		t.Fatal("no command")
	}
	sub, args := svc.Command[0], withDefaults(svc.Command[1:])
	var mounted []string
	for _, s := range svc.Secrets {
		if _, ok := c.Secrets[s.Source]; !ok {
			t.Errorf("secret %q is not defined at the top level", s.Source)
		}
		mounted = append(mounted, s.Target)
	}
	switch sub {
	case "synth":
		checkSynthArgs(t, args)
		if svc.NetworkMode != "none" {
			t.Errorf("synth network_mode = %q, want none", svc.NetworkMode)
		}
		return sub
	case "version":
		return sub
	case "serve", "agent":
	default:
		t.Fatalf("subcommand %q: want serve, agent, synth or version", sub)
	}
	mounts := map[string]string{}
	for _, v := range svc.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && strings.HasPrefix(parts[0], "./") {
			mounts[parts[1]] = filepath.Join(deployDir, parts[0])
		}
	}
	cfg, err := effectiveConfig(t, sub, args, svc.Environment, func(p string) string {
		host, ok := mounts[p]
		if !ok {
			t.Fatalf("--config %s is not a file mounted from deploy/", p)
		}
		return host
	})
	if err != nil {
		t.Fatalf("tre %s %s: %v", sub, strings.Join(args, " "), err)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("effective configuration does not validate: %v", err)
	}
	if slices.Contains(args, "--allow-weak-sandbox") {
		t.Error("--allow-weak-sandbox: the containers keep every sandbox layer (deploy/seccomp)")
	}
	for _, s := range secretPaths(cfg) {
		if !slices.Contains(mounted, s) {
			t.Errorf("configuration reads /run/secrets/%s but the service does not mount that secret", s)
		}
	}
	return sub
}

// systemdUnit is a unit file as a list of key=value settings per section,
// with line continuations joined.
type systemdUnit map[string][]string

func parseUnit(tb testing.TB, path string) systemdUnit {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	u := systemdUnit{}
	var line strings.Builder
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		text := strings.TrimSpace(sc.Text())
		if line.Len() == 0 && (text == "" || strings.HasPrefix(text, "#") || strings.HasPrefix(text, ";")) {
			continue
		}
		if cont, ok := strings.CutSuffix(text, "\\"); ok {
			line.WriteString(cont + " ")
			continue
		}
		line.WriteString(text)
		full := line.String()
		line.Reset()
		if strings.HasPrefix(full, "[") {
			continue
		}
		key, value, ok := strings.Cut(full, "=")
		if !ok {
			tb.Fatalf("%s:%d: not key=value: %q", path, n, full)
		}
		u[key] = append(u[key], strings.TrimSpace(value))
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	return u
}

func (u systemdUnit) has(key, value string) bool { return slices.Contains(u[key], value) }

func TestSystemdUnits(t *testing.T) {
	configs := map[string]string{
		"/etc/tre/broker.yaml": filepath.Join(deployDir, "broker.yaml"),
		"/etc/tre/agent.yaml":  filepath.Join(deployDir, "agent.yaml"),
	}
	tests := []struct {
		name string
		file string
		sub  string
	}{
		{name: "broker", file: "tre-broker.service", sub: "serve"},
		{name: "agent", file: "tre-agent.service", sub: "agent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(deployDir, "systemd", tt.file)
			u := parseUnit(t, path)
			if len(u["ExecStart"]) != 1 {
				t.Fatalf("want one ExecStart, have %d", len(u["ExecStart"]))
			}
			argv := strings.Fields(strings.TrimLeft(u["ExecStart"][0], "-@:+!"))
			if len(argv) < 2 || filepath.Base(argv[0]) != "tre" || argv[1] != tt.sub {
				t.Fatalf("ExecStart %q: want tre %s …", u["ExecStart"][0], tt.sub)
			}
			env := map[string]string{}
			for _, e := range u["Environment"] {
				for _, kv := range strings.Fields(e) {
					k, v, _ := strings.Cut(strings.Trim(kv, `"`), "=")
					env[k] = v
				}
			}
			cfg, err := effectiveConfig(t, tt.sub, argv[2:], env, func(p string) string {
				host, ok := configs[p]
				if !ok {
					t.Fatalf("--config %s is not one of deploy/'s example files", p)
				}
				return host
			})
			if err != nil {
				t.Fatalf("%s: %v", u["ExecStart"][0], err)
			}
			if err := cfg.Validate(); err != nil {
				t.Errorf("effective configuration does not validate: %v", err)
			}

			for _, d := range []struct{ key, value string }{
				{"User", "tre"},
				{"NoNewPrivileges", "yes"},
				{"ProtectSystem", "strict"},
				{"ProtectHome", "yes"},
				{"PrivateTmp", "yes"},
				{"PrivateDevices", "yes"},
				{"CapabilityBoundingSet", ""},
				{"LockPersonality", "yes"},
				{"SystemCallFilter", "@system-service"},
				{"RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"},
			} {
				if !u.has(d.key, d.value) {
					t.Errorf("missing %s=%s", d.key, d.value)
				}
			}
			if len(u["StateDirectory"]) == 0 || len(u["ReadOnlyPaths"]) == 0 {
				t.Error("want StateDirectory and ReadOnlyPaths")
			}

			// Paths the process writes must be in its state directory and
			// the data it reads must be read-only.
			readOnly := strings.Fields(strings.Join(u["ReadOnlyPaths"], " "))
			under := func(p string, roots []string) bool {
				for _, r := range roots {
					if p == r || strings.HasPrefix(p, strings.TrimSuffix(r, "/")+"/") {
						return true
					}
				}
				return false
			}
			var state []string
			for _, d := range strings.Fields(strings.Join(u["StateDirectory"], " ")) {
				state = append(state, "/var/lib/"+d)
			}
			switch c := cfg.(type) {
			case *ServeConfig:
				if c.DataDir != "" && !under(c.DataDir, state) {
					t.Errorf("data_dir %s is not a StateDirectory", c.DataDir)
				}
				for _, p := range []string{c.TLSCert, c.TLSKey} {
					if p != "" && !under(p, readOnly) {
						t.Errorf("%s is not under ReadOnlyPaths", p)
					}
				}
			case *AgentConfig:
				for _, p := range []string{c.Data, c.Catalog, c.TokenFile, c.CAFile} {
					if !under(p, readOnly) {
						t.Errorf("%s is not under ReadOnlyPaths", p)
					}
				}
				if !under(c.ScratchDir, state) {
					t.Errorf("scratch_dir %s is not a StateDirectory", c.ScratchDir)
				}
				if !u.has("IPAddressDeny", "any") || len(u["IPAddressAllow"]) == 0 {
					t.Error("the agent needs IPAddressDeny=any and an IPAddressAllow for the broker")
				}
			}
		})
	}
}

// TestSystemdVerify runs systemd's own parser over the units where it is
// installed, with the test binary standing in for /usr/local/bin/tre.
func TestSystemdVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var units []string
	for _, name := range []string{"tre-broker.service", "tre-agent.service"} {
		data, err := os.ReadFile(filepath.Join(deployDir, "systemd", name))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(string(data), "/usr/local/bin/tre", exe)), 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, p)
	}
	out, err := exec.Command(analyze, append([]string{"verify", "--man=no"}, units...)...).CombinedOutput()
	// verify reports problems on stderr, sometimes with exit status 0.
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func TestExampleConfigs(t *testing.T) {
	t.Run("broker", func(t *testing.T) {
		cfg := DefaultServeConfig()
		if err := decodeConfigFile(&cfg, filepath.Join(deployDir, "broker.yaml")); err != nil {
			t.Fatal(err)
		}
		// Where state lives is set next to the process (compose, systemd).
		cfg.DataDir = t.TempDir()
		if err := cfg.Validate(); err != nil {
			t.Errorf("broker.yaml plus a data directory does not validate: %v", err)
		}
	})
	t.Run("agent", func(t *testing.T) {
		cfg := DefaultAgentConfig()
		if err := decodeConfigFile(&cfg, filepath.Join(deployDir, "agent.yaml")); err != nil {
			t.Fatal(err)
		}
		if err := cfg.Validate(); err != nil {
			t.Errorf("agent.yaml does not validate on its own: %v", err)
		}
	})
}
