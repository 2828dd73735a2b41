package codelists

import (
	"testing"

	"github.com/nhs-tre/tre/e2e"
)

// TestMain builds the tre binary the tests run.
func TestMain(m *testing.M) { e2e.Main(m) }
