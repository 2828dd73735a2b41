package e2e

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"
)

// EnvRequireNetns makes NewNet fail the test, instead of returning the
// reason, where network namespaces cannot be made. CI sets it.
const EnvRequireNetns = "TRE_REQUIRE_NETNS"

// Net is a private IPv4 network on this machine for a system test: an
// address of the host's (Addr, on a veth pair of the Net's own, where the
// broker listens) and, per site, a network namespace joined to the host by a
// veth pair. A site's agent runs in its namespace (NetSite.StartTre) and
// reaches nothing but Addr; NetSite.Cut takes the host's end of its link
// down, so the site is cut off while its processes run on, and Reconnect
// brings it back.
//
// A Net takes a /24 of 10.200.0.0–10.254.255.0 that no interface or route
// of the host's uses, and names its links tre<4 hex digits><…> after it:
// creating the first link is what claims the /24, so tests running at once
// (even in other checkouts) never share names or addresses. Everything is
// removed when the test ends, passed or failed (t.Cleanup); a test binary
// killed outright leaves it behind (`ip netns list`, `ip link | grep tre`).
type Net struct {
	tb     testing.TB
	tag    string // B and C of its /24 10.B.C.0 in hex: its names' part
	prefix string // "10.B.C."
	pid    int
	sites  int
	// Addr is the host's address on the network, which every site
	// reaches.
	Addr string
}

// NetSite is one site's network namespace.
type NetSite struct {
	net *Net
	// NS is the namespace's name (`ip netns exec NS …`).
	NS string
	// Addr is the site's address; the host's end of its link is hostAddr.
	Addr, hostAddr string
	link           string // the host's end of the veth pair
}

// NewNet makes a Net, or returns nil and why it cannot (not Linux, not
// root, no iproute2, network namespaces or veth refused); with
// TRE_REQUIRE_NETNS=1 it fails the test instead.
func NewNet(tb testing.TB) (*Net, string) {
	tb.Helper()
	n, why := newNet(tb)
	if n == nil && os.Getenv(EnvRequireNetns) == "1" {
		tb.Fatalf("network namespaces are unavailable (%s=1): %s", EnvRequireNetns, why)
	}
	return n, why
}

func newNet(tb testing.TB) (*Net, string) {
	switch {
	case runtime.GOOS != "linux":
		return nil, "network namespaces need Linux"
	case os.Geteuid() != 0:
		return nil, "network namespaces need root"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, "no ip command (iproute2)"
	}
	n := &Net{tb: tb, pid: os.Getpid()}
	for range 50 {
		b, c := 200+rand.N(55), rand.N(256)
		prefix := fmt.Sprintf("10.%d.%d.", b, c)
		if used, err := subnetUsed(prefix); err != nil {
			return nil, err.Error()
		} else if used {
			continue
		}
		tag := fmt.Sprintf("%02x%02x", b, c)
		// The host's address, on a veth pair of its own (no dummy module
		// needed); creating it claims the /24, an existing name means
		// another test has it.
		out, err := ipCmd("link", "add", "tre"+tag+"a", "type", "veth", "peer", "name", "tre"+tag+"b")
		if err != nil {
			if strings.Contains(out, "File exists") {
				continue
			}
			return nil, fmt.Sprintf("ip link add … type veth: %v: %s", err, strings.TrimSpace(out))
		}
		n.tag, n.prefix, n.Addr = tag, prefix, prefix+"1"
		tb.Cleanup(func() { n.ip("link", "del", "tre"+tag+"a") })
		n.must("addr", "add", n.Addr+"/32", "dev", "tre"+tag+"a")
		n.must("link", "set", "tre"+tag+"a", "up")
		n.must("link", "set", "tre"+tag+"b", "up")
		return n, ""
	}
	return nil, "no free /24 in 10.200.0.0/16–10.254.255.0/24"
}

// subnetUsed reports whether prefix+"0/24" overlaps an address or a route
// of the host's.
func subnetUsed(prefix string) (bool, error) {
	_, mine, _ := net.ParseCIDR(prefix + "0/24")
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false, err
	}
	var nets []*net.IPNet
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			nets = append(nets, ipn)
		}
	}
	out, err := ipCmd("-4", "-o", "route", "show")
	if err != nil {
		return false, fmt.Errorf("ip route show: %v: %s", err, out)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] == "default" {
			continue
		}
		dst := f[0]
		if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		if _, ipn, err := net.ParseCIDR(dst); err == nil {
			nets = append(nets, ipn)
		}
	}
	for _, ipn := range nets {
		if ipn.Contains(mine.IP) || mine.Contains(ipn.IP) {
			return true, nil
		}
	}
	return false, nil
}

// AddSite makes a namespace for one more site, linked to the host.
func (n *Net) AddSite() *NetSite {
	n.tb.Helper()
	n.sites++
	i := n.sites
	if i > 60 {
		n.tb.Fatalf("a Net has room for 60 sites")
	}
	s := &NetSite{
		net:      n,
		NS:       fmt.Sprintf("tre-%s-%d-%d", n.tag, n.pid, i),
		link:     fmt.Sprintf("tre%sh%d", n.tag, i),
		hostAddr: fmt.Sprintf("%s%d", n.prefix, 4*i+1),
		Addr:     fmt.Sprintf("%s%d", n.prefix, 4*i+2),
	}
	peer := fmt.Sprintf("tre%ss%d", n.tag, i)
	n.must("netns", "add", s.NS)
	n.tb.Cleanup(func() { n.ip("netns", "del", s.NS) })
	n.must("link", "add", s.link, "type", "veth", "peer", "name", peer)
	// Deleting either end deletes both; the namespace's end is gone with
	// the namespace once its last process has exited.
	n.tb.Cleanup(func() { n.ip("link", "del", s.link) })
	n.must("link", "set", peer, "netns", s.NS)
	n.must("addr", "add", s.hostAddr+"/30", "dev", s.link)
	n.must("link", "set", s.link, "up")
	n.must("-n", s.NS, "link", "set", "lo", "up")
	n.must("-n", s.NS, "addr", "add", s.Addr+"/30", "dev", peer)
	n.must("-n", s.NS, "link", "set", peer, "up")
	// The host's address only: nothing else is reachable from the site.
	n.must("-n", s.NS, "route", "add", n.Addr+"/32", "via", s.hostAddr)
	return s
}

// StartTre starts `tre args…` in the site's namespace (`ip netns exec`,
// which execs tre in its own place: Process.Kill kills tre itself).
func (s *NetSite) StartTre(tb testing.TB, args ...string) *Process {
	tb.Helper()
	return startProcess(tb, "", append([]string{"netns", "exec", s.NS, tre}, args...), "ip", args[0])
}

// Cut takes the host's end of the site's link down: nothing the site sends
// arrives and nothing reaches it (no error either side: packets are lost,
// as on a cut line), while its processes run on.
func (s *NetSite) Cut(tb testing.TB) {
	tb.Helper()
	s.net.must("link", "set", s.link, "down")
}

// Reconnect brings the site's link back up (and its route, should the
// kernel have dropped it).
func (s *NetSite) Reconnect(tb testing.TB) {
	tb.Helper()
	s.net.must("link", "set", s.link, "up")
	s.net.must("-n", s.NS, "route", "replace", s.net.Addr+"/32", "via", s.hostAddr)
}

// must runs ip args… and fails the test on an error.
func (n *Net) must(args ...string) {
	n.tb.Helper()
	if out, err := ipCmd(args...); err != nil {
		n.tb.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(out))
	}
}

// ip runs ip args… for the cleanup, reporting an error other than the
// thing being gone already.
func (n *Net) ip(args ...string) {
	out, err := ipCmd(args...)
	if err != nil && !strings.Contains(out, "Cannot find device") && !strings.Contains(out, "No such file") {
		n.tb.Errorf("cleanup: ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(out))
	}
}

// ipCmd runs ip args… and returns its combined output.
func ipCmd(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}
