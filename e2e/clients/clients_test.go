package clients

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nhs-tre/tre/e2e"
)

// pythons returns the distinct Python 3 interpreters on this machine
// (python3 on PATH, and Debian's, whose python3-pandas the other may lack).
func pythons() []string {
	var out []string
	seen := map[string]bool{}
	for _, name := range []string{"python3", "/usr/bin/python3"} {
		exe, err := exec.Command(name, "-c", "import os, sys; print(os.path.realpath(sys.executable))").Output()
		if err != nil {
			continue
		}
		if p := strings.TrimSpace(string(exe)); !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// TestClients starts `tre demo` (broker, site agent and sandbox over
// synthetic data) on a free port, installs the Python client into a fresh
// virtual environment of every Python interpreter found (offline, as
// README.md says) and runs its unittest suite against the demo, then
// checks the R package (R CMD check, offline), installs it and runs its
// testthat suite against the demo. Each suite submits queries, has them
// approved and released or withheld, reads them back as data frames,
// asserts a refused query's error and a wait that times out, releases a
// survival table and checks the client's Kaplan–Meier curve against `tre
// query km --json` on it, and checks the client's declared wire types
// against api/openapi.json.
func TestClients(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the demo and runs the clients' suites; skipped with -short")
	}
	root := e2e.RepoRoot()
	dir := t.TempDir()
	demoDir := filepath.Join(dir, "demo")
	e2e.StartTreIn(t, "", "demo", "--dir", demoDir, "--patients", "3000", "--addr", "127.0.0.1:0")
	tokens := filepath.Join(demoDir, "tokens.env")
	e2e.Eventually(t, 5*time.Minute, "the demo writes tokens.env", func() error {
		_, err := os.Stat(tokens)
		return err
	})
	vars := e2e.ReadEnvFile(t, tokens)
	doc := filepath.Join(root, "api", "openapi.json")
	offline := e2e.CleanEnv("TRE_OPENAPI=" + doc)
	var demoVars []string
	for _, k := range []string{"TRE_BROKER", "TRE_TOKEN_RESEARCHER", "TRE_TOKEN_REVIEWER", "TRE_TOKEN_OUTPUT_CHECKER"} {
		if vars[k] == "" {
			t.Fatalf("tokens.env has no %s", k)
		}
		demoVars = append(demoVars, k+"="+vars[k])
	}
	// TRE_CLI: the live tests compare the clients' Kaplan–Meier curve with
	// `tre query km --json` on the same released table.
	live := withEnv(offline, append(demoVars, "TRE_CLI="+e2e.Tre())...)

	t.Run("python", func(t *testing.T) {
		interps := pythons()
		if len(interps) == 0 {
			e2e.NeedTool(t, e2e.EnvRequirePython, "the Python client's tests need python3")
		}
		withPandas := 0
		for i, py := range interps {
			venv := filepath.Join(dir, fmt.Sprintf("venv%d", i))
			// System site packages: Debian's python3-pandas, when installed.
			e2e.RunTool(t, dir, offline, 2*time.Minute, py, "-m", "venv", "--system-site-packages", venv)
			vpy := filepath.Join(venv, "bin", "python")
			e2e.RunTool(t, dir, offline, 2*time.Minute, vpy, "-m", "pip", "install", "--no-index", filepath.Join(root, "clients", "python"))
			where := e2e.RunTool(t, dir, offline, time.Minute, vpy, "-c", "import tre_client; print(tre_client.__file__)")
			if !strings.HasPrefix(strings.TrimSpace(where), venv) {
				t.Fatalf("%s imports tre_client from %s, not from its virtual environment", py, where)
			}
			if exec.Command(vpy, "-c", "import pandas").Run() == nil {
				withPandas++
			}
			// From the temporary directory: the tests import the installed
			// package, not the source tree.
			out := e2e.RunTool(t, dir, live, 10*time.Minute, vpy, "-m", "unittest", "discover", "-v", "-s", filepath.Join(root, "clients", "python", "tests"))
			t.Logf("%s:\n%s", py, out)
			for _, want := range []string{"test_released_and_read_back (test_live.Live", "test_refused_query (test_live.Live", "test_wait_times_out (test_live.Live", "test_survival_km (test_live.Live", "test_operations (test_wire.WireTest"} {
				if !regexp.MustCompile(regexp.QuoteMeta(want) + `[^\n]*\.\.\. ok`).MatchString(out) {
					t.Errorf("%s: %s… did not run and pass", py, want)
				}
			}
		}
		if withPandas == 0 && os.Getenv(e2e.EnvRequirePython) == "1" {
			t.Errorf("no Python interpreter here has pandas: the DataFrame path ran in unit tests only (Debian: apt-get install python3-pandas)")
		}
	})

	t.Run("r", func(t *testing.T) {
		if _, err := exec.LookPath("R"); err != nil {
			e2e.NeedTool(t, e2e.EnvRequireR, "the R client's tests need R (Debian: r-base-core)")
		}
		if err := exec.Command("Rscript", "-e", "for (p in c('httr', 'jsonlite', 'testthat')) library(p, character.only = TRUE)").Run(); err != nil {
			e2e.NeedTool(t, e2e.EnvRequireR, "the R client's tests need httr, jsonlite and testthat (Debian: r-cran-httr r-cran-jsonlite r-cran-testthat)")
		}
		pkg := filepath.Join(root, "clients", "r")
		work := filepath.Join(dir, "r")
		lib := filepath.Join(work, "lib")
		if err := os.MkdirAll(lib, 0o755); err != nil {
			t.Fatal(err)
		}
		// R CMD check on the built package, offline: no broker in its
		// environment (its live tests skip), and no look-up of the time
		// on the network.
		checkEnv := withEnv(offline, "_R_CHECK_FUTURE_FILE_TIMESTAMPS_=false", "_R_CHECK_CRAN_INCOMING_REMOTE_=false")
		e2e.RunTool(t, work, checkEnv, 5*time.Minute, "R", "CMD", "build", "--no-build-vignettes", pkg)
		tarballs, _ := filepath.Glob(filepath.Join(work, "treclient_*.tar.gz"))
		if len(tarballs) != 1 {
			t.Fatalf("R CMD build made %q", tarballs)
		}
		out := e2e.RunTool(t, work, checkEnv, 10*time.Minute, "R", "CMD", "check", "--no-manual", tarballs[0])
		if !strings.Contains(out, "Status: OK") {
			t.Errorf("R CMD check is not clean:\n%s", out)
		}
		if _, err := os.Stat(filepath.Join(work, "treclient.Rcheck", "tests", "testthat.Rout")); err != nil {
			t.Errorf("R CMD check ran no tests: %v", err)
		}

		rEnv := withEnv(live, "R_LIBS="+lib)
		e2e.RunTool(t, work, rEnv, 5*time.Minute, "R", "CMD", "INSTALL", "-l", lib, pkg)
		script := fmt.Sprintf(`res <- as.data.frame(testthat::test_dir(%q, package = "treclient", load_package = "installed", reporter = "summary", stop_on_failure = TRUE))
print(res[, c("file", "test", "nb", "failed", "skipped")])
if (any(res$skipped)) stop("skipped: ", paste(res$test[res$skipped], collapse = "; "))`, filepath.Join(pkg, "tests", "testthat"))
		out = e2e.RunTool(t, work, rEnv, 10*time.Minute, "Rscript", "-e", script)
		t.Logf("testthat:\n%s", out)
		if !strings.Contains(out, "test-live.R") {
			t.Errorf("the live tests did not run:\n%s", out)
		}
	})

	t.Run("r docs", func(t *testing.T) {
		// The Rd files and NAMESPACE are roxygen2's output from the
		// comments in R/: regenerating them must change nothing.
		if exec.Command("Rscript", "-e", "library(roxygen2)").Run() != nil {
			e2e.NeedTool(t, e2e.EnvRequireR, "checking the R documentation needs roxygen2 (Debian: r-cran-roxygen2)")
		}
		copyDir := filepath.Join(dir, "r-docs", "treclient")
		for _, rel := range []string{"DESCRIPTION", "NAMESPACE", "LICENSE", "R", "man"} {
			copyTree(t, filepath.Join(root, "clients", "r", rel), filepath.Join(copyDir, rel))
		}
		e2e.RunTool(t, copyDir, offline, 5*time.Minute, "Rscript", "-e", "roxygen2::roxygenise()")
		for _, rel := range []string{"NAMESPACE", "man"} {
			out, err := exec.Command("diff", "-r", filepath.Join(root, "clients", "r", rel), filepath.Join(copyDir, rel)).CombinedOutput()
			if err != nil {
				t.Errorf("clients/r/%s is not what roxygen2 makes of R/ (run roxygen2::roxygenise() in clients/r):\n%s", rel, out)
			}
		}
	})
}

// copyTree copies the file or directory src to dst.
func copyTree(tb testing.TB, src, dst string) {
	tb.Helper()
	err := filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o644)
	})
	if err != nil {
		tb.Fatalf("copy %s: %v", src, err)
	}
}

// withEnv returns a new environment: base and kv.
func withEnv(base []string, kv ...string) []string {
	return append(append([]string(nil), base...), kv...)
}
