package sandbox

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"unsafe"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"golang.org/x/sys/unix"
)

// Landlock is applied by hand with x/sys/unix rather than go-landlock: on
// kernels before Landlock ABI 8 go-landlock reaches every thread through
// libcap's psx, which must wrap pthread_create at link time — at odds with
// DuckDB's C++ thread pool. Instead stage 1 restricts its one locked OS
// thread and execve's itself: after execve that thread is the whole process,
// so every thread stage 2 (Go runtime, gRPC, DuckDB) ever has inherits the
// domain. No_new_privs travels the same way.

// landlockABI returns the kernel's Landlock ABI version, 0 if none.
func landlockABI() int {
	v, _, errno := unix.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, 0, 0, unix.LANDLOCK_CREATE_RULESET_VERSION)
	if errno != 0 {
		return 0
	}
	return int(v)
}

// landlockFSRights is every filesystem right the given ABI knows.
func landlockFSRights(abi int) uint64 {
	r := uint64(unix.LANDLOCK_ACCESS_FS_MAKE_SYM<<1) - 1 // ABI 1: 13 rights
	if abi >= 2 {
		r |= unix.LANDLOCK_ACCESS_FS_REFER
	}
	if abi >= 3 {
		r |= unix.LANDLOCK_ACCESS_FS_TRUNCATE
	}
	if abi >= 5 {
		r |= unix.LANDLOCK_ACCESS_FS_IOCTL_DEV
	}
	return r
}

const (
	llFileRead  = unix.LANDLOCK_ACCESS_FS_READ_FILE
	llFileExec  = unix.LANDLOCK_ACCESS_FS_EXECUTE
	llFileWrite = unix.LANDLOCK_ACCESS_FS_WRITE_FILE
	llDirRead   = unix.LANDLOCK_ACCESS_FS_READ_FILE | unix.LANDLOCK_ACCESS_FS_READ_DIR
)

// landlockRule is one path and the rights granted beneath it.
type landlockRule struct {
	path   string
	rights uint64
}

// landlockRules is the whole filesystem the child may touch: the data file
// read-only, the job directory read-write, its own binary and the loader
// and libraries needed to execve it, /dev/null and /dev/urandom, and the
// few /proc and /sys files DuckDB reads to size itself.
func landlockRules(abi int, exe, dataPath, jobDir string) []landlockRule {
	all := landlockFSRights(abi)
	rw := all &^ (unix.LANDLOCK_ACCESS_FS_EXECUTE | unix.LANDLOCK_ACCESS_FS_REFER)
	rules := []landlockRule{
		{dataPath, llFileRead},
		{jobDir, rw},
		{exe, llFileRead | llFileExec},
		{"/dev/null", llFileRead | llFileWrite},
		{"/dev/urandom", llFileRead},
		{"/etc/ld.so.cache", llFileRead},
		// DuckDB sizes itself from these at open and aborts if its
		// cgroup file cannot be read. All are read-only views of this
		// process or of the machine's CPU count and memory policy.
		{"/proc/self", llDirRead},
		{"/proc/stat", llFileRead},
		{"/proc/meminfo", llFileRead},
		{"/proc/sys/vm/overcommit_memory", llFileRead},
		{"/sys/fs/cgroup", llDirRead},
		{"/sys/devices/system/cpu", llDirRead},
	}
	for _, d := range []string{"/lib", "/lib64", "/usr/lib", "/usr/lib64", "/lib/x86_64-linux-gnu"} {
		rules = append(rules, landlockRule{d, llDirRead | llFileExec})
	}
	return rules
}

// restrictThreadLandlock applies the rules to the calling OS thread only.
// The caller must hold the thread (runtime.LockOSThread) and execve next.
func restrictThreadLandlock(abi int, rules []landlockRule) error {
	handled := landlockFSRights(abi)
	attr := unix.LandlockRulesetAttr{Handled_access_fs: handled}
	size := unsafe.Sizeof(attr.Handled_access_fs)
	if abi >= 4 {
		// No TCP bind or connect at all: no rules grant any port.
		attr.Handled_access_net = unix.LANDLOCK_ACCESS_NET_BIND_TCP | unix.LANDLOCK_ACCESS_NET_CONNECT_TCP
		size += unsafe.Sizeof(attr.Handled_access_net)
	}
	if abi >= 6 {
		// No signals to, and no abstract unix sockets of, processes
		// outside the domain.
		attr.Scoped = unix.LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | unix.LANDLOCK_SCOPE_SIGNAL
		size += unsafe.Sizeof(attr.Scoped)
	}
	fd, _, errno := unix.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, uintptr(unsafe.Pointer(&attr)), size, 0)
	if errno != 0 {
		return fmt.Errorf("landlock_create_ruleset: %w", errno)
	}
	defer unix.Close(int(fd))
	for _, r := range rules {
		pfd, err := unix.Open(r.path, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // optional system path absent on this distribution
			}
			return fmt.Errorf("landlock rule %s: %w", r.path, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(pfd, &st); err != nil {
			unix.Close(pfd)
			return fmt.Errorf("landlock rule %s: %w", r.path, err)
		}
		rights := r.rights & handled
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			rights &= llFileRead | llFileExec | llFileWrite | unix.LANDLOCK_ACCESS_FS_TRUNCATE | unix.LANDLOCK_ACCESS_FS_IOCTL_DEV
		}
		pb := unix.LandlockPathBeneathAttr{Allowed_access: rights, Parent_fd: int32(pfd)}
		_, _, errno := unix.Syscall6(unix.SYS_LANDLOCK_ADD_RULE, fd, unix.LANDLOCK_RULE_PATH_BENEATH, uintptr(unsafe.Pointer(&pb)), 0, 0, 0)
		unix.Close(pfd)
		if errno != 0 {
			return fmt.Errorf("landlock_add_rule %s: %w", r.path, errno)
		}
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	if _, _, errno := unix.Syscall(unix.SYS_LANDLOCK_RESTRICT_SELF, fd, 0, 0); errno != 0 {
		return fmt.Errorf("landlock_restrict_self: %w", errno)
	}
	return nil
}

// stage1 runs first in the child: it puts its thread under Landlock and
// no_new_privs, then execve's the same binary as stage 2. It returns only
// on failure.
func stage1(cc *childConfig) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("locate executable: %w", err)
	}
	exe, err = filepath.EvalSymlinks(exe)
	if err != nil {
		return fmt.Errorf("locate executable: %w", err)
	}
	runtime.LockOSThread() // never unlocked: this thread execve's or the process exits
	landlock := "0"
	if abi := landlockABI(); abi > 0 {
		if err := restrictThreadLandlock(abi, landlockRules(abi, exe, cc.DataPath, cc.JobDir)); err != nil {
			if !cc.AllowWeak {
				return err
			}
		} else {
			landlock = strconv.Itoa(abi)
		}
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	env := append(os.Environ(), envStage+"=2", envLandlock+"="+landlock)
	return syscall.Exec(exe, os.Args, env)
}

// hardenProcess applies, in stage 2, the layers that cover the whole
// process directly: rlimits, not dumpable, parent-death signal and the
// first seccomp filter. It returns the layers applied.
func hardenProcess(cc *childConfig) ([]string, error) {
	var layers []string
	if os.Getenv(envLandlock) != "0" && os.Getenv(envLandlock) != "" {
		layers = append(layers, LayerLandlock)
	}
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		return nil, fmt.Errorf("pdeathsig: %w", err)
	}
	if os.Getppid() != cc.ParentPID {
		return nil, errors.New("parent already gone")
	}
	// Past RLIMIT_FSIZE a write should fail with EFBIG (DuckDB reports it)
	// rather than kill the process with SIGXFSZ.
	signal.Ignore(unix.SIGXFSZ)
	cpu := uint64(cc.CPUSeconds)
	fsize := max(cc.TempDirMaxSize+1<<20, cc.FileSizeLimit)
	limits := []struct {
		res int
		lim unix.Rlimit
	}{
		{unix.RLIMIT_CORE, unix.Rlimit{Cur: 0, Max: 0}},
		{unix.RLIMIT_NOFILE, unix.Rlimit{Cur: 512, Max: 512}},
		{unix.RLIMIT_FSIZE, unix.Rlimit{Cur: uint64(fsize), Max: uint64(fsize)}},
		{unix.RLIMIT_CPU, unix.Rlimit{Cur: cpu, Max: cpu + 1}},
	}
	if cc.AddressSpace > 0 {
		limits = append(limits, struct {
			res int
			lim unix.Rlimit
		}{unix.RLIMIT_AS, unix.Rlimit{Cur: uint64(cc.AddressSpace), Max: uint64(cc.AddressSpace)}})
	}
	for _, l := range limits {
		if err := unix.Setrlimit(l.res, &l.lim); err != nil {
			return nil, fmt.Errorf("setrlimit %d: %w", l.res, err)
		}
	}
	layers = append(layers, LayerRlimits)
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("not dumpable: %w", err)
	}
	layers = append(layers, LayerNotDumpable)
	if v, err := unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0); err == nil && v == 1 {
		layers = append(layers, LayerNoNewPrivs)
	}
	if !seccomp.Supported() {
		return layers, nil
	}
	if err := seccomp.LoadFilter(seccomp.Filter{
		NoNewPrivs: true,
		Flag:       seccomp.FilterFlagTSync,
		Policy:     basePolicy(),
	}); err != nil {
		return nil, fmt.Errorf("seccomp: %w", err)
	}
	layers = append(layers, LayerSeccomp)
	return layers, nil
}

// basePolicy denies what the child never needs: exec, network sockets
// (only AF_UNIX for the plugin's socket; connect is not needed at all, the
// child only accepts), debugging other processes, kernel objects and
// namespaces. io_uring is denied because its operations bypass seccomp.
func basePolicy() seccomp.Policy {
	return seccomp.Policy{
		DefaultAction: seccomp.ActionAllow,
		Syscalls: []seccomp.SyscallGroup{
			{
				Action: seccomp.ActionErrno,
				Names: []string{
					"execve", "execveat", "fork", "vfork",
					"connect",
					"ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
					"mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsmount", "fsconfig", "fspick",
					"unshare", "setns",
					"bpf", "perf_event_open", "userfaultfd",
					"keyctl", "add_key", "request_key",
					"init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
					"reboot", "swapon", "swapoff", "acct", "quotactl",
					"name_to_handle_at", "open_by_handle_at",
					"io_uring_setup", "io_uring_enter", "io_uring_register",
					"personality", "syslog",
				},
			},
			{
				Action: seccomp.ActionErrno,
				NamesWithCondtions: []seccomp.NameWithConditions{{
					Name: "socket",
					Conditions: seccomp.ArgumentConditions{{
						Argument: 0, Operation: seccomp.NotEqual, Value: unix.AF_UNIX,
					}},
				}},
			},
		},
	}
}

// jobPolicy is stacked once the plugin's listener exists and before DuckDB
// runs researcher SQL: no new sockets of any kind, no listening.
func jobPolicy() seccomp.Policy {
	return seccomp.Policy{
		DefaultAction: seccomp.ActionAllow,
		Syscalls: []seccomp.SyscallGroup{{
			Action: seccomp.ActionErrno,
			Names:  []string{"socket", "socketpair", "bind", "listen"},
		}},
	}
}

func loadJobPolicy() error {
	if !seccomp.Supported() {
		return nil
	}
	return seccomp.LoadFilter(seccomp.Filter{NoNewPrivs: true, Flag: seccomp.FilterFlagTSync, Policy: jobPolicy()})
}

// rssBytes reads a process's resident set size from /proc.
func rssBytes(pid int) (int64, error) { return procStatusBytes(pid, "VmRSS") }

// peakRSSBytes reads a process's peak resident set size (VmHWM) from
// /proc: the high-water mark of the memory it has had since its exec.
// Not wait4's ru_maxrss: a child started by vfork (as os/exec does)
// carries its parent's high-water mark into exec, so every child of a host
// that once held 2.5 GiB reports at least 2.5 GiB there.
func peakRSSBytes(pid int) (int64, error) { return procStatusBytes(pid, "VmHWM") }

func procStatusBytes(pid int, field string) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	return statusBytes(b, field)
}
