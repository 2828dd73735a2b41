package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"path/filepath"
)

// defaultScratchDir is the scratch directory `tre run` and `tre agent` use
// when none is configured: one per command and data file under the user's
// cache directory ($XDG_CACHE_HOME, else $HOME/.cache), so the release
// snapshot the sandbox builds for a version of the data file (about the
// file's size; sandbox/snapshot.go) is reused by the next run or agent
// start instead of being built again each time. Job directories inside it
// are removed after each job.
func defaultScratchDir(getenv func(string) string, command, data string) (string, error) {
	base := getenv("XDG_CACHE_HOME")
	if base == "" {
		home := getenv("HOME")
		if home == "" {
			return "", errors.New("no scratch directory: set --scratch-dir, XDG_CACHE_HOME or HOME")
		}
		base = filepath.Join(home, ".cache")
	}
	abs, err := filepath.Abs(data)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(abs))
	return filepath.Join(base, "tre", command, hex.EncodeToString(sum[:8])), nil
}
