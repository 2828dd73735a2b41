package main

import (
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// goPackage is the part of `go list -json` the boundary rules need.
type goPackage struct {
	ImportPath string
	Dir        string
	GoFiles    []string
	Imports    []string
	Deps       []string
}

const module = "github.com/nhs-tre/tre"

// listPackages runs `go list -json` over the whole module (non-test files).
func listPackages(tb testing.TB) []goPackage {
	tb.Helper()
	cmd := exec.Command("go", "list", "-json", module+"/...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("go list: %v", err)
	}
	var pkgs []goPackage
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p goPackage
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			tb.Fatalf("decode go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) == 0 {
		tb.Fatal("go list found no packages")
	}
	return pkgs
}

// isPkg reports whether path is the package root or one beneath it.
func isPkg(path, root string) bool {
	return path == root || strings.HasPrefix(path, root+"/")
}

func inFolder(path, folder string) bool {
	p := module + "/" + folder
	return path == p || strings.HasPrefix(path, p+"/")
}

// ginFree reports whether the package at path must not link gin at all:
// the contract package api (not its subpackages: api/server is gin's one
// home), api/auth, api/metrics, api/web and api/apitest, the site agent
// (site, and the sandbox it starts, through job), and the command-line
// client (cli).
func ginFree(path string) bool {
	switch path {
	case module + "/api", module + "/api/auth", module + "/api/metrics", module + "/api/web", module + "/api/apitest":
		return true
	}
	return inFolder(path, "site") || inFolder(path, "sandbox") || inFolder(path, "job") || inFolder(path, "cli")
}

// TestImportBoundaries enforces the trust zones of ARCHITECTURE.md in the
// import graph: a reviewer should not have to trust discipline alone.
func TestImportBoundaries(t *testing.T) {
	const (
		gin    = "github.com/gin-gonic/gin"
		duckdb = "github.com/duckdb/duckdb-go/v2"
		dplib  = "github.com/google/differential-privacy/go/v3/"
	)
	// dp is pure math: these are the only standard packages it may use.
	dpStd := map[string]bool{
		"errors": true, "fmt": true, "math": true, "sort": true, "slices": true,
		"strings": true, "strconv": true, "maps": true, "cmp": true,
		"math/big": true, "math/rand/v2": true, "encoding/binary": true,
		"crypto/sha256": true, "encoding/hex": true,
		// Spec.Hash: the SHA-256 of a Spec's JSON encoding, which federated
		// parts carry (encoding only, no I/O).
		"encoding/json": true,
	}
	pkgs := listPackages(t)
	imports := map[string][]string{}
	for _, p := range pkgs {
		imports[p.ImportPath] = p.Imports
	}
	for _, p := range pkgs {
		for _, imp := range p.Imports {
			switch {
			case imp == gin || strings.HasPrefix(imp, gin+"/"):
				if !inFolder(p.ImportPath, "api/server") {
					t.Errorf("%s imports gin: only api/server may", p.ImportPath)
				}
			case imp == duckdb || strings.HasPrefix(imp, duckdb+"/"):
				if !inFolder(p.ImportPath, "sandbox") && !inFolder(p.ImportPath, "synth") && !inFolder(p.ImportPath, "bench") && !inFolder(p.ImportPath, "queries") {
					t.Errorf("%s imports the DuckDB driver: only sandbox (data), synth (synthetic data), bench (raw DuckDB, the benchmark's baseline) and queries (parser) may", p.ImportPath)
				}
			}
			if inFolder(p.ImportPath, "dp") && !dpStd[imp] && !strings.HasPrefix(imp, dplib) && !inFolder(imp, "dp") {
				t.Errorf("dp imports %s: dp is pure computation (stdlib math and the DP library only)", imp)
			}
		}
		// gin stays beneath api/ and out of everything a client links: the
		// contract package (the CLI, the site agent and other clients build
		// on it), the site agent, and the api packages without a router.
		if ginFree(p.ImportPath) {
			for _, dep := range p.Deps {
				if dep == gin || strings.HasPrefix(dep, gin+"/") {
					t.Errorf("%s links gin (through its imports): only api/server may", p.ImportPath)
					break
				}
			}
		}
		if inFolder(p.ImportPath, "broker") {
			for _, dep := range p.Deps {
				if inFolder(dep, "sandbox") || inFolder(dep, "api") {
					t.Errorf("%s depends on %s: the broker never reaches patient data or HTTP", p.ImportPath, dep)
				}
			}
		}
		if inFolder(p.ImportPath, "queries") || inFolder(p.ImportPath, "dp") {
			for _, dep := range p.Deps {
				if inFolder(dep, "broker") || inFolder(dep, "api") || inFolder(dep, "sandbox") {
					t.Errorf("%s depends on %s: the engine sits below the broker and the sandbox", p.ImportPath, dep)
				}
			}
		}
		if inFolder(p.ImportPath, "sandbox") {
			for _, dep := range p.Deps {
				if inFolder(dep, "broker") || inFolder(dep, "api") || inFolder(dep, "site") {
					t.Errorf("%s depends on %s: the sandbox never reaches the network; the agent (site) talks to the broker", p.ImportPath, dep)
				}
			}
		}
		// The site agent and the command-line client are network clients of
		// the broker: no patient data and no DuckDB but the parser (gin:
		// ginFree).
		if inFolder(p.ImportPath, "site") || inFolder(p.ImportPath, "cli") {
			for _, dep := range p.Deps {
				if inFolder(dep, "sandbox") || inFolder(dep, "synth") || inFolder(dep, "bench") || inFolder(dep, "broker/sqlstore") {
					t.Errorf("%s depends on %s: the site agent runs jobs only through its Runner and the client only calls the API, wired in cmd", p.ImportPath, dep)
				}
				for _, imp := range imports[dep] {
					if isPkg(imp, duckdb) && dep != module+"/queries" {
						t.Errorf("%s depends on %s, which imports the DuckDB driver: it may link DuckDB only through the queries parser", p.ImportPath, dep)
					}
				}
			}
		}
		if !inFolder(p.ImportPath, "e2e") {
			for _, imp := range p.Imports {
				if inFolder(imp, "e2e") {
					t.Errorf("%s imports %s: the system tests' support is for tests only", p.ImportPath, imp)
				}
			}
		}
		if inFolder(p.ImportPath, "job") {
			for _, imp := range p.Imports {
				if strings.Contains(imp, ".") {
					t.Errorf("job imports %s: the agent–sandbox contract holds types only (standard library)", imp)
				}
			}
		}
	}
}

// TestQueriesUsesDuckDBOnlyToParse: the engine may link DuckDB for its SQL
// parser, but must never open a database file. One file holds the driver,
// and it opens only an in-memory database.
func TestQueriesUsesDuckDBOnlyToParse(t *testing.T) {
	for _, p := range listPackages(t) {
		if !inFolder(p.ImportPath, "queries") {
			continue
		}
		for _, f := range p.GoFiles {
			src, err := os.ReadFile(filepath.Join(p.Dir, f))
			if err != nil {
				t.Fatal(err)
			}
			text := string(src)
			if !strings.Contains(text, `"github.com/duckdb/duckdb-go/v2"`) {
				continue
			}
			if f != "parser.go" {
				t.Errorf("%s/%s imports the DuckDB driver: only parser.go may", p.ImportPath, f)
				continue
			}
			if !strings.Contains(text, `duckdb.NewConnector("", nil)`) {
				t.Errorf("%s/%s: the parser must open an in-memory database (NewConnector(\"\", nil))", p.ImportPath, f)
			}
			for _, bad := range []string{"ATTACH", "read_csv", "read_parquet", ".duckdb", "sql.Open("} {
				if strings.Contains(text, bad) {
					t.Errorf("%s/%s mentions %q: the parser never reads data", p.ImportPath, f, bad)
				}
			}
		}
	}
}
