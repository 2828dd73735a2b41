//go:build !linux || !cgo

package sandbox

// Without cgo on Linux the child cannot reach jemalloc to set the decay
// back for its job, so a pooled child is started without keepFreedEnv.
const haveAllocatorControl = false

func setAllocatorDecay(ms int64) error { return errNoJemalloc }
