package sandbox

import (
	"math"

	"github.com/google/differential-privacy/go/v3/noise"

	"github.com/nhs-tre/tre/job"
)

// Test-only access to the child's hooks. This file is compiled only into the
// package's test binary, so production code can neither build a raw or
// probe job nor start a child that honours one.

func testServeOptions() ServeOptions {
	return ServeOptions{runRaw: runRaw, probe: probeForbidden, testNoise: offsetNoise}
}

func rawJob(j job.Job) *request { return &request{Job: j, Raw: true} }

// noiseJob runs j with the noise of every statistic replaced by a fixed
// offset (partition selection keeps the library's randomness).
func noiseJob(j job.Job, offset float64) *request { return &request{Job: j, TestNoise: offset} }

// offsetNoise adds a fixed offset to every exact value, as the DP library's
// own tests replace noise; its other methods are the library's Laplace.
type offsetNoiseT struct {
	noise.Noise
	offset float64
}

func offsetNoise(offset float64) noise.Noise {
	return offsetNoiseT{Noise: noise.Laplace(), offset: offset}
}

func (n offsetNoiseT) AddNoiseFloat64(x float64, _ int64, _, _, _ float64) (float64, error) {
	return x + n.offset, nil
}

// AddNoiseInt64 is the same offset, rounded, on a federated part's
// quantile-tree nodes (the library's integer noise).
func (n offsetNoiseT) AddNoiseInt64(x, _, _ int64, _, _ float64) (int64, error) {
	return x + int64(math.Round(n.offset)), nil
}
