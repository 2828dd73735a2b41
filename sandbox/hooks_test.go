package sandbox

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/nhs-tre/tre/job"
)

// runRaw executes SQL that skipped the compiler (test hook only) and
// reports only the size of what came back.
func runRaw(ctx context.Context, ldb *lockedDB, query string, maxRows int) (*rawOutcome, error) {
	if err := prepareOne(ldb.conn, query); err != nil {
		return nil, err
	}
	rows, err := ldb.conn.QueryContext(ctx, query)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	out := &rawOutcome{}
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		out.Rows++
		for _, v := range vals {
			out.Bytes += len(fmt.Sprint(v))
		}
		if out.Rows > maxRows {
			return nil, job.Errorf(job.CodeTooLarge, "the query returned more than %d rows", maxRows)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// probeForbidden runs inside the hardened child and tries what the layers
// must stop. Each outcome says whether the attempt failed.
func probeForbidden(cc *childConfig) []probeOutcome {
	var out []probeOutcome
	add := func(name string, err error) {
		o := probeOutcome{Name: name, Blocked: err != nil}
		if err != nil {
			o.Errno = err.Error()
		}
		out = append(out, o)
	}
	add("socket_tcp", func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}())
	add("socket_udp6", func() error {
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM, 0)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}())
	add("socket_unix_after_start", func() error {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}())
	add("exec_true", exec.Command("/bin/true").Run())
	add("open_etc_passwd_write", func() error {
		f, err := os.OpenFile("/etc/passwd", os.O_WRONLY|os.O_APPEND, 0)
		if err == nil {
			f.Close()
		}
		return err
	}())
	add("read_etc_hostname", func() error {
		_, err := os.ReadFile("/etc/hostname")
		return err
	}())
	add("write_beside_data", func() error {
		return os.WriteFile(filepath.Join(filepath.Dir(cc.DataPath), "exfil.txt"), []byte("x"), 0o600)
	}())
	add("write_data_file", func() error {
		f, err := os.OpenFile(cc.DataPath, os.O_WRONLY, 0)
		if err == nil {
			f.Close()
		}
		return err
	}())
	add("ptrace_traceme", func() error {
		_, _, e := unix.Syscall(unix.SYS_PTRACE, unix.PTRACE_TRACEME, 0, 0)
		if e != 0 {
			return e
		}
		return nil
	}())
	add("mount_tmpfs", unix.Mount("none", cc.JobDir, "tmpfs", 0, ""))
	add("unshare_net", unix.Unshare(unix.CLONE_NEWNET))
	add("io_uring_setup", func() error {
		_, _, e := unix.Syscall(unix.SYS_IO_URING_SETUP, 1, 0, 0)
		if e != 0 {
			return e
		}
		return nil
	}())
	// Control: the job directory must stay writable, or the probes above
	// prove nothing about selectivity.
	ctl := os.WriteFile(filepath.Join(cc.JobDir, "control.txt"), []byte("ok"), 0o600)
	out = append(out, probeOutcome{Name: "control_write_job_dir", Blocked: ctl != nil})
	return out
}
