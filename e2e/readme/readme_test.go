package readme

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/e2e"
)

// envRequireREADME makes a missing tool (git, bash, curl, python3 with
// requests) a failure of TestREADME instead of a skip. CI sets it.
const envRequireREADME = "TRE_REQUIRE_README"

// readmeBlock is one fenced code block of README.md and the heading it
// sits under.
type readmeBlock struct {
	heading, lang, text string
}

// readmeBlocks extracts README.md's fenced code blocks.
func readmeBlocks(tb testing.TB, path string) []readmeBlock {
	tb.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	var blocks []readmeBlock
	var heading string
	var cur *readmeBlock
	for _, line := range strings.Split(string(data), "\n") {
		switch {
		case cur != nil && strings.HasPrefix(line, "```"):
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.text += line + "\n"
		case strings.HasPrefix(line, "```"):
			cur = &readmeBlock{heading: heading, lang: strings.TrimPrefix(line, "```")}
		case strings.HasPrefix(line, "#"):
			heading = strings.TrimSpace(strings.TrimLeft(line, "#"))
		}
	}
	return blocks
}

// blocksUnder returns the blocks of language lang under heading, in order.
func blocksUnder(blocks []readmeBlock, heading, lang string) []readmeBlock {
	var out []readmeBlock
	for _, b := range blocks {
		if b.heading == heading && b.lang == lang {
			out = append(out, b)
		}
	}
	return out
}

// freshCopy copies the repository's files as a clone would have them (the
// tracked files and the new ones git does not ignore: no demo directory,
// no binaries, no databases) into a new directory.
func freshCopy(tb testing.TB, root string) string {
	tb.Helper()
	cmd := exec.Command("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("git ls-files: %v", err)
	}
	dst := filepath.Join(tb.TempDir(), "tre")
	n := 0
	for _, rel := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		src := filepath.Join(root, rel)
		st, err := os.Lstat(src)
		if errors.Is(err, os.ErrNotExist) {
			continue // deleted in the working tree, not yet committed
		}
		if err != nil {
			tb.Fatal(err)
		}
		if !st.Mode().IsRegular() {
			continue
		}
		data, err := os.ReadFile(src)
		if err != nil {
			tb.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dst, rel)), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, rel), data, st.Mode().Perm()); err != nil {
			tb.Fatal(err)
		}
		n++
	}
	if n < 50 {
		tb.Fatalf("copied only %d files from %s", n, root)
	}
	return dst
}

// shell runs script with bash in dir, as if pasted into a terminal (no
// -e: a paste does not stop at a failing line), and returns its output.
func shell(tb testing.TB, dir string, env []string, timeout time.Duration, script string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Dir, cmd.Env = dir, env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		tb.Fatalf("bash: %v\n--- script:\n%s\n--- output:\n%s", err, script, out.String())
	}
	return out.String()
}

// lockedBuffer is a bytes.Buffer safe for a writer and a reader.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startShell starts script with bash in its own process group, which the
// test interrupts (Ctrl-C) when it ends, and returns its output so far.
func startShell(tb testing.TB, dir string, env []string, script string) *lockedBuffer {
	tb.Helper()
	cmd := exec.Command("bash", "-c", script)
	cmd.Dir, cmd.Env = dir, env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tb.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if tb.Failed() {
			tb.Logf("%s output:\n%s", script, out.String())
		}
	})
	return out
}

// releasedCSV finds the released table with the given header in out and
// checks it has want rows, each a group key followed by a number or a
// suppression flag.
func releasedCSV(tb testing.TB, out, header string, want int) {
	tb.Helper()
	i := strings.Index(out, header+"\n")
	if i < 0 {
		tb.Fatalf("no released table with header %q in:\n%s", header, out)
	}
	recs, err := csv.NewReader(strings.NewReader(out[i:])).ReadAll()
	if err != nil {
		tb.Fatalf("released table: %v\n%s", err, out[i:])
	}
	if len(recs)-1 != want {
		tb.Fatalf("released table has %d rows, want %d:\n%s", len(recs)-1, want, out[i:])
	}
	number := regexp.MustCompile(`^-?[0-9]+(\.[0-9]+)?$`)
	for _, r := range recs[1:] {
		if !(number.MatchString(r[1]) || strings.HasSuffix(r[len(r)-1], "suppressed")) {
			tb.Errorf("row %q has neither a value nor a suppression flag", r)
		}
	}
}

// TestREADME follows README.md to the letter on a fresh copy of the
// repository: the quickstart's commands with the default relative demo
// directory, then, against the running demo, the curl, Python and tre
// blocks and the Python and R clients' sections (installed as they say) as
// they stand in the README (extracted here, never copied), each ending
// with a released table. Only the broker's port differs (TRE_ADDR,
// so parallel runs do not collide); everything else is what a new user
// types.
func TestREADME(t *testing.T) {
	if testing.Short() {
		t.Skip("builds tre and runs the demo from a fresh copy; skipped with -short")
	}
	for _, tool := range [][]string{{"git", "--version"}, {"bash", "--version"}, {"curl", "--version"}, {"python3", "-c", "import requests"}} {
		if err := exec.Command(tool[0], tool[1:]...).Run(); err != nil {
			msg := fmt.Sprintf("README test needs %s: %v", strings.Join(tool, " "), err)
			if os.Getenv(envRequireREADME) == "1" {
				t.Fatal(msg)
			}
			t.Skip(msg + " (set " + envRequireREADME + "=1 to fail instead)")
		}
	}
	root := e2e.RepoRoot()
	blocks := readmeBlocks(t, filepath.Join(root, "README.md"))
	dir := freshCopy(t, root)
	env := e2e.CleanEnv("TRE_ADDR=127.0.0.1:0")

	quick := blocksUnder(blocks, "Quickstart", "sh")
	if len(quick) != 1 {
		t.Fatalf("README has %d sh blocks under Quickstart, want 1", len(quick))
	}
	var commands []string
	for _, line := range strings.Split(quick[0].text, "\n") {
		if cmd, _, _ := strings.Cut(line, "#"); strings.TrimSpace(cmd) != "" {
			commands = append(commands, strings.TrimSpace(cmd))
		}
	}
	want := []string{"go run ./cmd/tre demo --walkthrough", "go run ./cmd/tre demo", "go test ./..."}
	if strings.Join(commands, "\n") != strings.Join(want, "\n") {
		// This test runs the first two; the third is what runs it.
		t.Fatalf("quickstart commands %q, want %q", commands, want)
	}

	// A ceiling, not a measurement: unloaded this takes a few minutes (the
	// first build in a fresh copy, 100,000 synthetic patients, the release
	// snapshot); a CI machine saturated by parallel packages once needed
	// more than 15.
	out := shell(t, dir, env, 30*time.Minute, commands[0])
	t.Logf("%s:\n%s", commands[0], out)
	for _, want := range []string{"Generating 100000 synthetic patients into tre-demo/gp.duckdb", "released", "London", "Walkthrough complete", "What next"} {
		if !strings.Contains(out, want) {
			t.Fatalf("walkthrough output lacks %q:\n%s", want, out)
		}
	}

	demo := startShell(t, dir, env, commands[1])
	e2e.Eventually(t, 5*time.Minute, "the demo says it is running", func() error {
		if !strings.Contains(demo.String(), "tre demo is running") {
			return errors.New("not yet")
		}
		return nil
	})
	if !strings.Contains(demo.String(), "Reusing tre-demo/gp.duckdb") {
		t.Errorf("the demo did not reuse the walkthrough's data:\n%s", demo.String())
	}
	vars := e2e.ReadEnvFile(t, filepath.Join(dir, "tre-demo", "tokens.env"))
	as := func(role broker.Role) *api.Client {
		return &api.Client{BaseURL: vars["TRE_BROKER"], Token: vars["TRE_TOKEN_"+strings.ToUpper(string(role))]}
	}
	if err := as(broker.RoleAdmin).Readyz(context.Background()); err != nil {
		t.Fatalf("demo broker at %q: %v", vars["TRE_BROKER"], err)
	}

	const section = "Submitting a query and fetching the result"
	shells := blocksUnder(blocks, section, "sh")
	python := blocksUnder(blocks, section, "python")
	if len(shells) != 2 || len(python) != 1 {
		t.Fatalf("README has %d sh and %d python blocks under %q, want 2 and 1", len(shells), len(python), section)
	}

	t.Run("curl", func(t *testing.T) {
		out := shell(t, dir, env, 5*time.Minute, shells[0].text)
		t.Logf("curl block:\n%s", out)
		releasedCSV(t, out, "region,n,n_ci_low,n_ci_high,n_flag", 9)
	})

	// The Python block runs in the shell the curl block set up: with the
	// variables of tokens.env. Bob and Carol act meanwhile, as the README
	// asks.
	t.Run("python", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "python3", "-c", python[0].text)
		cmd.Dir = dir
		cmd.Env = e2e.CleanEnv("TRE_BROKER="+vars["TRE_BROKER"], "TRE_TOKEN_RESEARCHER="+vars["TRE_TOKEN_RESEARCHER"])
		var pyOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &pyOut, &pyOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		var id int64
		e2e.Eventually(t, 2*time.Minute, "the Python query in the review queue", func() error {
			queue, err := as(broker.RoleReviewer).ReviewQueue(ctx, api.ListOptions{})
			if err != nil {
				return err
			}
			for _, q := range queue.Items {
				if q.Purpose == "Mean BMI by sex" {
					id = q.ID
					return nil
				}
			}
			return errors.New("not submitted yet")
		})
		if _, err := as(broker.RoleReviewer).ApproveQuery(ctx, id, "ok"); err != nil {
			t.Fatal(err)
		}
		e2e.WaitStatus(t, as(broker.RoleReviewer), id, broker.StatusAwaitingOutputCheck)
		if _, err := as(broker.RoleOutputChecker).ReleaseQuery(ctx, id, "safe"); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("python: %v\n%s", err, pyOut.String())
		}
		out := pyOut.String()
		t.Logf("Python block:\n%s", out)
		rows := 0
		for _, sex := range []string{"'female'", "'male'", "'unknown'"} {
			if strings.Contains(out, "["+sex+", ") {
				rows++
			}
		}
		if !strings.Contains(out, "status: released") || rows != 3 {
			t.Fatalf("Python block output, want the released table (3 rows):\n%s", out)
		}
	})

	t.Run("tre", func(t *testing.T) {
		script := "set -a; . tre-demo/tokens.env; set +a\n" + shells[1].text
		out := shell(t, dir, env, 10*time.Minute, script)
		t.Logf("tre block:\n%s", out)
		releasedCSV(t, out, "sex,n,n_ci_low,n_ci_high,n_flag", 3)
	})

	// The clients' sections: install as they say (sh, in the fresh copy),
	// then run their example in the environment tokens.env sets. Each
	// example plays all three people itself.
	tokenVars := []string{"TRE_BROKER=" + vars["TRE_BROKER"]}
	for _, role := range []broker.Role{broker.RoleResearcher, broker.RoleReviewer, broker.RoleOutputChecker} {
		k := "TRE_TOKEN_" + strings.ToUpper(string(role))
		tokenVars = append(tokenVars, k+"="+vars[k])
	}
	clientBlocks := func(t *testing.T, heading, lang string) (install, code string) {
		t.Helper()
		sh, src := blocksUnder(blocks, heading, "sh"), blocksUnder(blocks, heading, lang)
		if len(sh) != 1 || len(src) != 1 {
			t.Fatalf("README has %d sh and %d %s blocks under %q, want 1 and 1", len(sh), len(src), lang, heading)
		}
		return sh[0].text, src[0].text
	}

	t.Run("python client", func(t *testing.T) {
		install, code := clientBlocks(t, "From Python", "python")
		if err := exec.Command("python3", "-m", "venv", "-h").Run(); err != nil {
			e2e.NeedTool(t, e2e.EnvRequirePython, fmt.Sprintf("the README's Python client section needs python3 with venv: %v", err))
		}
		out := shell(t, dir, env, 5*time.Minute, install)
		t.Logf("install:\n%s", out)
		out = e2e.RunTool(t, dir, e2e.CleanEnv(tokenVars...), 5*time.Minute, filepath.Join(dir, ".venv", "bin", "python"), "-c", code)
		t.Logf("Python client block:\n%s", out)
		releasedRegions(t, out)
	})

	t.Run("r client", func(t *testing.T) {
		install, code := clientBlocks(t, "From R", "r")
		if err := exec.Command("Rscript", "-e", "library(httr); library(jsonlite)").Run(); err != nil {
			e2e.NeedTool(t, e2e.EnvRequireR, fmt.Sprintf("the README's R client section needs R with httr and jsonlite: %v", err))
		}
		// The user's own R library, here a new one.
		lib := "R_LIBS_USER=" + filepath.Join(t.TempDir(), "R")
		out := shell(t, dir, append(e2e.CleanEnv("TRE_ADDR=127.0.0.1:0"), lib), 5*time.Minute, install)
		t.Logf("install:\n%s", out)
		script := filepath.Join(t.TempDir(), "example.R")
		if err := os.WriteFile(script, []byte(code), 0o644); err != nil {
			t.Fatal(err)
		}
		out = e2e.RunTool(t, dir, append(e2e.CleanEnv(tokenVars...), lib), 5*time.Minute, "Rscript", script)
		t.Logf("R client block:\n%s", out)
		releasedRegions(t, out)
	})
}

// releasedRegions checks that out shows a released table by region, as the
// clients print it: the aggregate's interval and flag columns and a row
// for each of the demo's nine regions.
func releasedRegions(tb testing.TB, out string) {
	tb.Helper()
	for _, want := range []string{"n_ci_low", "n_ci_high", "n_flag", "North East", "North West", "Yorkshire and The Humber",
		"East Midlands", "West Midlands", "East of England", "London", "South East", "South West"} {
		if !strings.Contains(out, want) {
			tb.Errorf("the released table lacks %q:\n%s", want, out)
		}
	}
}
