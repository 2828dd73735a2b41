package main

import (
	"bytes"
	"encoding/json"
	"os"
	"testing"

	"github.com/moby/profiles/seccomp"
)

// TestProfileCurrent fails when profile.json is not what the command
// writes: regenerate it with `go run ./deploy/seccomp > deploy/seccomp/profile.json`.
func TestProfileCurrent(t *testing.T) {
	want, err := JSON()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("profile.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("profile.json is stale: go run ./deploy/seccomp > deploy/seccomp/profile.json")
	}
}

// TestOnlyCloneChanged checks the profile differs from Docker's default in
// clone's namespace mask alone, and only by user and network namespaces.
func TestOnlyCloneChanged(t *testing.T) {
	p, err := Profile()
	if err != nil {
		t.Fatal(err)
	}
	def := seccomp.DefaultProfile()
	if len(p.Syscalls) != len(def.Syscalls) {
		t.Fatalf("%d syscall rules, Docker's default has %d", len(p.Syscalls), len(def.Syscalls))
	}
	diffs := 0
	for i := range def.Syscalls {
		a, _ := json.Marshal(def.Syscalls[i])
		b, _ := json.Marshal(p.Syscalls[i])
		if bytes.Equal(a, b) {
			continue
		}
		diffs++
		got, was := p.Syscalls[i].Args[0].Value, def.Syscalls[i].Args[0].Value
		if was&^got != sandboxNamespaces || got&^was != 0 {
			t.Errorf("clone mask %#x, Docker's %#x: want only CLONE_NEWUSER|CLONE_NEWNET removed", got, was)
		}
	}
	if diffs != 1 {
		t.Errorf("%d rules differ from Docker's default, want 1", diffs)
	}
	if p.DefaultAction != def.DefaultAction {
		t.Errorf("default action %s, Docker's %s", p.DefaultAction, def.DefaultAction)
	}
}
