package bench

import (
	"fmt"
	"io"
	"strings"

	"github.com/schollz/progressbar/v3"
)

// benchProgress is a progress bar on a terminal and section lines
// otherwise.
type benchProgress struct {
	bar  *progressbar.ProgressBar
	w    io.Writer
	last string
	done bool
}

func newBenchProgress(w io.Writer, terminal bool, total int) *benchProgress {
	p := &benchProgress{w: w}
	if terminal {
		p.bar = progressbar.NewOptions(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetWidth(30),
			progressbar.OptionShowCount(),
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionSetPredictTime(false),
			progressbar.OptionClearOnFinish(),
		)
	}
	return p
}

// stage names what runs now.
func (p *benchProgress) stage(name string) {
	if p.bar != nil {
		p.bar.Describe(fmt.Sprintf("%-48s", name))
		return
	}
	section, _, _ := strings.Cut(name, ":")
	if section != p.last {
		fmt.Fprintf(p.w, "bench: %s\n", section)
		p.last = section
	}
}

func (p *benchProgress) step() {
	if p.bar != nil {
		_ = p.bar.Add(1) // a failed redraw is not an error of the run
	}
}

func (p *benchProgress) finish() {
	if p.bar != nil && !p.done {
		_ = p.bar.Finish()
		p.done = true
	}
}

// steps advances the bar by n steps.
func (p *benchProgress) steps(n int) {
	if p.bar != nil {
		_ = p.bar.Add(n)
	}
}
