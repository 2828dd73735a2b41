package sandbox

import (
	"flag"
	"os"
	"testing"
)

// TestMain doubles as the sandbox child: the runner re-executes the test
// binary with this argument, as production re-executes `tre __sandbox`.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == childArg {
		// The test hook's fixed-offset noise is not one the DP library
		// knows, and its quantile tree warns of that through glog, which
		// aborts the process when it cannot create its log file (the
		// hardened child cannot): warnings go to stderr instead, which the
		// runner logs. Production noise is the library's own and never
		// warns.
		if err := flag.Set("logtostderr", "true"); err != nil {
			panic(err)
		}
		os.Exit(Serve(testServeOptions()))
	}
	os.Exit(m.Run())
}

const childArg = "__sandbox_test_child"
