package provider

import (
	"io"
	"strings"
	"sync"
	"time"
)

// output collects one function's stdout and stderr across restarts and
// updates: each line goes to Options.Logs, prefixed with the function's
// name, and the last lines stay in memory so that a failing test can
// print them (Provider.Logs) and the logs endpoint can serve them.
type output struct {
	name string
	max  int

	// wmu is shared by all functions' outputs so that their lines never
	// interleave mid-line in Options.Logs.
	wmu *sync.Mutex
	w   io.Writer

	mu    sync.Mutex
	lines []line
}

type line struct {
	at   time.Time
	text string
}

func (o *output) add(text string) {
	now := time.Now()
	o.mu.Lock()
	o.lines = append(o.lines, line{now, text})
	if len(o.lines) > o.max {
		// Copy rather than reslice so that the dropped lines are freed.
		o.lines = append([]line(nil), o.lines[len(o.lines)-o.max:]...)
	}
	o.mu.Unlock()

	if o.w != nil {
		o.wmu.Lock()
		_, _ = io.WriteString(o.w, o.name+": "+text+"\n")
		o.wmu.Unlock()
	}
}

func (o *output) snapshot() []line {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]line(nil), o.lines...)
}

func (o *output) String() string {
	var b strings.Builder
	for _, l := range o.snapshot() {
		b.WriteString(l.text)
		b.WriteByte('\n')
	}
	return b.String()
}
