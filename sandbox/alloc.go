package sandbox

import "errors"

// errNoJemalloc: the DuckDB linked in does not use jemalloc.
var errNoJemalloc = errors.New("DuckDB's allocator is not jemalloc")

// duckdbDecayMS is DuckDB's compiled-in jemalloc decay (dirty and muzzy).
const duckdbDecayMS = 1000

// jeConfEnv is the environment variable DuckDB's jemalloc reads its
// options from, once, before the first allocation.
const jeConfEnv = "DUCKDB_JE_MALLOC_CONF"

// keepFreedEnv, in a pooled child's environment, turns jemalloc's decay off
// from its first allocation (warm.go); the child sets DuckDB's back with
// setAllocatorDecay before its job.
const keepFreedEnv = jeConfEnv + "=dirty_decay_ms:-1,muzzy_decay_ms:-1"
