package queue

import (
	"net"
	"sync"
	"time"
)

// Breaker dials the broker for a NATS client (nats.SetCustomDialer) and
// closes the connection it dialed from outside the client when a write on
// it is stuck (Guard).
//
// A server that stops reading (stalled, or its socket buffers full) blocks
// the client's socket write, and the client holds its connection's lock
// while it writes, so every publish on that connection waits behind it,
// each for as long as the client's write timeout, one after another: a
// requeue could wait minutes whatever its own timeout. Closing the
// connection from outside ends the blocked write at once; the client then
// reconnects, and publishes meanwhile fail at once (ErrUnavailable).
type Breaker struct {
	mu   sync.Mutex
	conn net.Conn
	d    net.Dialer
}

// Dial dials as net.Dialer does and keeps the connection for Guard.
func (b *Breaker) Dial(network, address string) (net.Conn, error) {
	c, err := b.d.Dial(network, address)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.conn = c
	b.mu.Unlock()
	return c, nil
}

// stuckGrace is how long past its timeout a write may take before Guard
// takes it to be stuck in the client rather than waiting for the server's
// acknowledgement, which the timeout already ends.
const stuckGrace = 2 * time.Second

// Guard arms a timer that closes the connection dialed last, the one the
// write is on, if a write given timeout has not returned within timeout
// plus a grace, and returns the function that disarms it, to be called
// once the write returns. A connection dialed after Guard (a reconnect
// meanwhile) is never closed by it.
func (b *Breaker) Guard(timeout time.Duration) (disarm func()) {
	b.mu.Lock()
	c := b.conn
	b.mu.Unlock()
	if c == nil {
		return func() {}
	}
	t := time.AfterFunc(timeout+stuckGrace, func() { _ = c.Close() })
	return func() { t.Stop() }
}
