package sandbox

// Test-only access to the child's hooks. This file is compiled only into the
// package's test binary, so production code can neither build a raw or
// probe job nor start a child that honours one.

func testServeOptions() ServeOptions { return ServeOptions{runRaw: runRaw, probe: probeForbidden} }

func rawJob(j Job) Job   { j.raw = true; return j }
func probeJob(j Job) Job { j.probe = true; return j }
