package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/nhs-tre/tre/synth"
)

// synthResult is a generation with the peak resident memory of each stage.
type synthResult struct {
	Stats *synth.Stats
	// Peak is the process's peak RSS during each stage, by stage name.
	Peak map[string]int64
	// PeakTotal is the process's peak RSS over the whole generation.
	PeakTotal int64
	// PerStage is false when the kernel would not reset the peak between
	// stages; each stage's figure is then the peak so far.
	PerStage bool
}

// runSynth generates the data in this process, resetting the kernel's
// peak-RSS counter (/proc/self/clear_refs, "5") when each stage starts and
// reading it (VmHWM) when the next starts, so every stage gets its own peak.
func runSynth(ctx context.Context, opts synth.Options) (*synthResult, error) {
	r := &synthResult{Peak: map[string]int64{}, PerStage: resetPeakRSS() == nil}
	current := ""
	mark := func() {
		hwm, err := peakRSS()
		if err != nil {
			return
		}
		if current != "" {
			r.Peak[current] = hwm
		}
		r.PeakTotal = max(r.PeakTotal, hwm)
		if r.PerStage {
			_ = resetPeakRSS() // it worked once; a later failure only widens the next figure
		}
	}
	opts.Progress = func(stage string, done, total int) {
		mark()
		current = stage
		if done == total {
			current = ""
		}
	}
	st, err := synth.Generate(ctx, opts)
	if err != nil {
		return nil, err
	}
	r.Stats = st
	return r, nil
}

// peakRSS reads VmHWM from /proc/self/status, in bytes.
func peakRSS() (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if rest, ok := bytes.CutPrefix(line, []byte("VmHWM:")); ok {
			f := strings.Fields(string(rest))
			if len(f) == 0 {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, err
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/self/status")
}

// resetPeakRSS sets VmHWM back to the current RSS (Linux ≥ 4.0).
func resetPeakRSS() error {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}
