// Command seccomp writes deploy/seccomp/profile.json, the seccomp profile
// the tre containers run under: Docker's default profile with one change.
//
//	go run ./deploy/seccomp > deploy/seccomp/profile.json
//
// Docker's default profile lets a process without CAP_SYS_ADMIN call clone
// only with none of the namespace flags set. Every tre sandbox child is
// started in new user and network namespaces (sandbox/runner.go), so in a
// container with the default profile the agent either refuses every job or,
// with --allow-weak-sandbox, runs it without those two layers. This profile
// allows clone with CLONE_NEWUSER and CLONE_NEWNET, and still refuses the
// other namespace flags (mount, PID, IPC, UTS, cgroup), unshare, setns,
// mount and the rest of what the default profile keeps for CAP_SYS_ADMIN.
// Everything else the sandbox applies (Landlock, its own seccomp filters,
// no_new_privs, rlimits) the default profile already allows.
//
// The base is the default profile of github.com/moby/profiles/seccomp, the
// package Docker's engine takes its own from; the test in this directory
// fails when profile.json is not what this command writes.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// sandboxNamespaces are the namespaces a sandbox child is created in.
const sandboxNamespaces = unix.CLONE_NEWUSER | unix.CLONE_NEWNET

// Profile returns Docker's default profile with clone's namespace mask
// narrowed by sandboxNamespaces.
func Profile() (*seccomp.Seccomp, error) {
	p := seccomp.DefaultProfile()
	changed := 0
	for _, sc := range p.Syscalls {
		if !slices.Equal(sc.Names, []string{"clone"}) || len(sc.Args) != 1 {
			continue
		}
		// The rule for every architecture but s390, where clone's flags
		// are its second argument. tre's sandbox is built for amd64 and
		// arm64 only, so the s390 rule keeps Docker's mask.
		a := &sc.Args[0]
		if a.Index != 0 || a.Op != specs.OpMaskedEqual || a.ValueTwo != 0 {
			continue
		}
		if a.Value&sandboxNamespaces != sandboxNamespaces {
			return nil, fmt.Errorf("clone rule's mask %#x no longer holds CLONE_NEWUSER|CLONE_NEWNET", a.Value)
		}
		a.Value &^= sandboxNamespaces
		sc.Comment = "tre: Docker's rule, but the sandbox's user and network namespaces are allowed"
		changed++
	}
	if changed != 1 {
		return nil, errors.New("Docker's default profile has no single clone flags rule to change")
	}
	return p, nil
}

// JSON is the profile as the file holds it.
func JSON() ([]byte, error) {
	p, err := Profile()
	if err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(p, "", "\t")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

func main() {
	b, err := JSON()
	if err != nil {
		fmt.Fprintln(os.Stderr, "seccomp:", err)
		os.Exit(1)
	}
	os.Stdout.Write(b)
}
