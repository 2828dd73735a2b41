//go:build linux && cgo

package sandbox

/*
#include <stddef.h>
#include <stdlib.h>
#include <sys/types.h>

// DuckDB's jemalloc, with its symbols prefixed. Weak: a DuckDB built
// without jemalloc leaves it NULL, and the child then keeps the defaults.
extern int duckdb_je_mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen) __attribute__((weak));

static int tre_je_get_ssize(const char *name, ssize_t *v) {
	if (duckdb_je_mallctl == NULL) return -1;
	size_t n = sizeof *v;
	return duckdb_je_mallctl(name, v, &n, NULL, 0);
}

static int tre_je_set_ssize(const char *name, ssize_t v) {
	if (duckdb_je_mallctl == NULL) return -1;
	return duckdb_je_mallctl(name, NULL, NULL, &v, sizeof v);
}

static int tre_je_get_unsigned(const char *name, unsigned *v) {
	if (duckdb_je_mallctl == NULL) return -1;
	size_t n = sizeof *v;
	return duckdb_je_mallctl(name, v, &n, NULL, 0);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"
)

// haveAllocatorControl: setAllocatorDecay reaches DuckDB's jemalloc.
const haveAllocatorControl = true

// setAllocatorDecay sets how long DuckDB's allocator keeps freed pages
// before it returns them to the kernel (-1: never), for every arena it has
// and the ones it creates later.
func setAllocatorDecay(ms int64) error {
	for _, kind := range []string{"dirty", "muzzy"} {
		if err := jeSet("arenas."+kind+"_decay_ms", ms); err != nil {
			return err
		}
	}
	n, err := jeArenas()
	if err != nil {
		return err
	}
	for i := range n {
		for _, kind := range []string{"dirty", "muzzy"} {
			err := jeSet(fmt.Sprintf("arena.%d.%s_decay_ms", i, kind), ms)
			if errors.Is(err, syscall.EFAULT) {
				continue // an index jemalloc has not created an arena for
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

func jeGet(name string) (int64, error) {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	var v C.ssize_t
	if rc := C.tre_je_get_ssize(cs, &v); rc != 0 {
		return 0, jeError(name, rc)
	}
	return int64(v), nil
}

func jeSet(name string, v int64) error {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	if rc := C.tre_je_set_ssize(cs, C.ssize_t(v)); rc != 0 {
		return jeError(name, rc)
	}
	return nil
}

func jeArenas() (int, error) {
	cs := C.CString("arenas.narenas")
	defer C.free(unsafe.Pointer(cs))
	var n C.unsigned
	if rc := C.tre_je_get_unsigned(cs, &n); rc != 0 {
		return 0, jeError("arenas.narenas", rc)
	}
	return int(n), nil
}

func jeError(name string, rc C.int) error {
	if rc < 0 {
		return errNoJemalloc
	}
	return fmt.Errorf("mallctl %s: %w", name, syscall.Errno(rc))
}
