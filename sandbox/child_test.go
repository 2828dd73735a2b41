package sandbox

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"
)

// inProcessServer is the child's job server in the test process, over a
// fresh fixture. Its seccomp policy is marked loaded without being loaded:
// it would forbid this test process its own sockets.
func inProcessServer(t *testing.T) (*server, Config) {
	t.Helper()
	cfg := testConfig(t, MustFixture(t, 50))
	cc := &childConfig{
		DataPath: cfg.DataPath, JobDir: t.TempDir(), MemoryLimit: cfg.MemoryLimit, Threads: cfg.Threads,
		MaxExpressionDepth: 250, TempDirMaxSize: 1 << 30, MaxRows: cfg.MaxRows, AllowWeak: true,
	}
	s := &server{cc: cc, log: slog.New(slog.DiscardHandler), opts: testServeOptions()}
	s.once.Do(func() {})
	return s, cfg
}

// The child sends its answer before it closes DuckDB (freeing the buffer
// pool is work the host need not wait for), and has closed it when run
// returns.
func TestResponseSentBeforeDataClosed(t *testing.T) {
	s, cfg := inProcessServer(t)
	j := job("SELECT sex, count(*) AS n FROM patients GROUP BY sex")
	in, err := json.Marshal(&request{QueryID: j.QueryID, SQL: j.SQL, SQLHash: j.SQLHash, Epsilon: j.Epsilon, Catalog: cfg.Catalog})
	if err != nil {
		t.Fatal(err)
	}
	var buf []byte
	frames, openWhileSending := 0, 0
	err = s.run(context.Background(), in, func(f frame) error {
		frames++
		if _, err := findOpenedData(cfg.DataPath); err == nil {
			openWhileSending++
		}
		if f.Error != nil {
			t.Errorf("error frame: %s: %s", f.Error.Code, f.Error.Message)
		}
		buf = append(buf, f.Data...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var resp response
	if err := json.Unmarshal(buf, &resp); err != nil || resp.Result == nil || len(resp.Result.Rows) == 0 {
		t.Fatalf("response %s: %v, want a protected result", buf, err)
	}
	if frames == 0 || openWhileSending != frames {
		t.Errorf("data open during %d of %d frames, want all", openWhileSending, frames)
	}
	if _, err := findOpenedData(cfg.DataPath); err == nil {
		t.Error("the data file is still open after run returned")
	}
}
