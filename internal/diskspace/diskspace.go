// Package diskspace keeps a reserve of free space on the file system of a
// broker store the mailbox runs itself (the standalone binary's embedded
// server): new messages are refused before the file system fills, because
// neither embedded server survives a full one well. NATS Streaming panics
// when its file store cannot flush (nats-streaming-server's ioLoop), which
// ends the process; JetStream answers no write that hit a full disk and
// refuses every later write to that stream until the server restarts
// (nats-server's filestore keeps its first write error). Below the
// reserve, the retries, statuses and dead letters of messages already
// accepted still have room.
package diskspace

import (
	"fmt"

	"github.com/openfaas/mailbox/internal/queue"
)

// Guard refuses new messages while the file system holding Dir has less
// than Reserve bytes free.
type Guard struct {
	// Dir is on the file system watched. Required.
	Dir string
	// Reserve is the free space kept. 0 keeps none: Check always passes.
	Reserve int64
}

// Check returns an error wrapping queue.ErrStorageFull when Dir's file
// system has less than Reserve bytes free, nil otherwise, and nil when
// the free space cannot be read (the broker's own answer still counts).
func (g Guard) Check() error {
	if g.Reserve <= 0 {
		return nil
	}
	free, ok := Free(g.Dir)
	if !ok || free >= g.Reserve {
		return nil
	}
	return fmt.Errorf("%w: %d bytes free on the store's file system, below the %d kept in reserve", queue.ErrStorageFull, free, g.Reserve)
}
