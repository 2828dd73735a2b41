package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// CleanEnv is the environment of a new user's shell: this one without
// any TRE_ variable, plus the given ones.
func CleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TRE_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// ReadEnvFile reads KEY=VALUE lines, as `set -a; . FILE` would.
func ReadEnvFile(tb testing.TB, path string) map[string]string {
	tb.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	vars := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			vars[k] = v
		}
	}
	return vars
}

// The Python (clients/python) and R (clients/r) clients, tested against the
// real system. CI sets both variables; without them a missing interpreter
// or package skips its part.
const (
	EnvRequirePython = "TRE_REQUIRE_PYTHON"
	EnvRequireR      = "TRE_REQUIRE_R"
)

// NeedTool skips t, or fails it when env is "1", with msg.
func NeedTool(t *testing.T, env, msg string) {
	t.Helper()
	if os.Getenv(env) == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg + " (set " + env + "=1 to fail instead)")
}

// RunTool runs name args… in dir with env and returns its combined output;
// a failure or a timeout fails t with that output.
func RunTool(t *testing.T, dir string, env []string, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir, cmd.Env = dir, env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	t.Logf("%s %s: %s", filepath.Base(name), strings.Join(args, " "), time.Since(start).Round(100*time.Millisecond))
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return out.String()
}
