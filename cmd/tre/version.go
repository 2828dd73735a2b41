package main

import (
	"runtime/debug"
	"strings"
)

// buildVersion is this binary's version as the Go toolchain recorded it:
// the module version (or "(devel)") and the VCS revision it was built
// from, "+dirty" when the tree had changes. The site agent reports it to
// the broker, which shows it on the sites page.
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	return strings.TrimSpace("tre " + v + " " + rev + dirty)
}
