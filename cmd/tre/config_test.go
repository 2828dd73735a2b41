package main

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

type testConfig struct {
	Addr     string        `yaml:"addr" flag:"addr" usage:"listen address"`
	Dev      bool          `yaml:"dev" flag:"dev" usage:"dev mode"`
	Workers  int           `yaml:"workers" flag:"workers" usage:"workers"`
	Epsilon  float64       `yaml:"epsilon" flag:"epsilon" usage:"epsilon"`
	Timeout  time.Duration `yaml:"timeout" flag:"timeout" usage:"timeout"`
	Keys     []string      `yaml:"keys" flag:"key" usage:"keys"`
	Password string        `yaml:"password" flag:"password" usage:"secret" secret:"true"`
}

func defaultTestConfig() testConfig {
	return testConfig{Addr: "127.0.0.1:8080", Workers: 1, Timeout: time.Minute}
}

func writeFile(tb testing.TB, dir, name, content string) string {
	tb.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := writeFile(t, dir, "c.yaml", "addr: 0.0.0.0:9000\nworkers: 3\nepsilon: 0.5\nkeys: [a.pem, b.pem]\ntimeout: 30s\n")
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want testConfig
	}{
		{
			name: "defaults",
			want: defaultTestConfig(),
		},
		{
			name: "file over defaults",
			args: []string{"--config", file},
			want: testConfig{Addr: "0.0.0.0:9000", Workers: 3, Epsilon: 0.5, Timeout: 30 * time.Second, Keys: []string{"a.pem", "b.pem"}},
		},
		{
			name: "environment over file",
			args: []string{"--config", file},
			env:  map[string]string{"TRE_WORKERS": "5", "TRE_DEV": "true"},
			want: testConfig{Addr: "0.0.0.0:9000", Workers: 5, Dev: true, Epsilon: 0.5, Timeout: 30 * time.Second, Keys: []string{"a.pem", "b.pem"}},
		},
		{
			name: "flags over environment",
			args: []string{"--config", file, "--workers", "7", "--key", "c.pem"},
			env:  map[string]string{"TRE_WORKERS": "5"},
			want: testConfig{Addr: "0.0.0.0:9000", Workers: 7, Epsilon: 0.5, Timeout: 30 * time.Second, Keys: []string{"c.pem"}},
		},
		{
			name: "config path from the environment",
			env:  map[string]string{"TRE_CONFIG": file},
			want: testConfig{Addr: "0.0.0.0:9000", Workers: 3, Epsilon: 0.5, Timeout: 30 * time.Second, Keys: []string{"a.pem", "b.pem"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := defaultTestConfig()
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			getenv := func(k string) string { return tt.env[k] }
			if _, err := parseConfigArgs(fs, tt.args, &cfg, getenv); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, cfg); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		file string
		args []string
		env  map[string]string
		want string
	}{
		{name: "unknown key", file: "addr: x\nbogus: 1\n", want: `line 2: unknown key "bogus"`},
		{name: "bad number", file: "workers: many\n", want: `line 1: key "workers": "many" is not a whole number`},
		{name: "bad duration", file: "timeout: 5\n", want: `key "timeout": "5" is not a duration`},
		{name: "nested value", file: "addr:\n  host: x\n", want: `key "addr" needs a single value`},
		{name: "not a mapping", file: "- a\n- b\n", want: "expected a mapping"},
		{name: "bad environment", env: map[string]string{"TRE_DEV": "yes please"}, want: "environment variable TRE_DEV"},
		{name: "bad flag", args: []string{"--epsilon", "lots"}, want: `invalid value "lots" for flag -epsilon`},
		{name: "stray argument", args: []string{"extra"}, want: `unexpected argument "extra"`},
		{name: "missing file", args: []string{"--config", filepath.Join(dir, "nope.yaml")}, want: "config file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.file != "" {
				args = append([]string{"--config", writeFile(t, dir, strings.ReplaceAll(tt.name, " ", "_")+".yaml", tt.file)}, args...)
			}
			cfg := defaultTestConfig()
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			_, err := parseConfigArgs(fs, args, &cfg, func(k string) string { return tt.env[k] })
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestPrintConfigRedactsSecrets(t *testing.T) {
	cfg := defaultTestConfig()
	cfg.Password = "hunter2"
	out, err := printConfig(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "hunter2") || !strings.Contains(string(out), "password: REDACTED") {
		t.Errorf("printConfig did not redact the secret:\n%s", out)
	}
	if !strings.Contains(string(out), "addr: 127.0.0.1:8080") {
		t.Errorf("printConfig lost a value:\n%s", out)
	}
}

// TestPrintConfigRoundTrip: what --print-config shows is a config file that
// loads back to the same configuration (secrets aside).
func TestPrintConfigRoundTrip(t *testing.T) {
	want := defaultTestConfig()
	want.Dev = true
	want.Workers = 4
	want.Epsilon = 0.25
	want.Keys = []string{"a.pem", "b.pem"}
	out, err := printConfig(&want)
	if err != nil {
		t.Fatal(err)
	}
	path := writeFile(t, t.TempDir(), "printed.yaml", string(out))
	got := defaultTestConfig()
	if err := decodeConfigFile(&got, path); err != nil {
		t.Fatalf("decode printed config: %v\n%s", err, out)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s\nprinted:\n%s", diff, out)
	}
}
