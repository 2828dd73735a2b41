package sandbox

import (
	"os"
	"testing"
)

// TestMain doubles as the sandbox child: the runner re-executes the test
// binary with this argument, as production re-executes `tre __sandbox`.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == childArg {
		os.Exit(Serve(testServeOptions()))
	}
	os.Exit(m.Run())
}

const childArg = "__sandbox_test_child"
