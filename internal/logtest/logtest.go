// Package logtest holds what tests need to read the logs of code that
// logs from many goroutines.
package logtest

import (
	"bytes"
	"sync"
)

// Buffer is a log destination that goroutines may write to at once and a
// test may read at any time.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
