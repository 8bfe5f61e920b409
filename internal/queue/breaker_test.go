package queue_test

import (
	"net"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/queue"
)

// A write to a peer that never reads blocks once the socket buffers are
// full; a Guard past its timeout and grace closes the connection, which
// ends the write, and a disarmed one does not.
func TestBreakerEndsStuckWrite(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c // held, never read
		}
	}()
	var b queue.Breaker

	// Disarmed in time: the connection stays.
	c, err := b.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	defer (<-accepted).Close()
	b.Guard(10 * time.Millisecond)()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatalf("a disarmed guard broke the connection: %v", err)
	}

	disarm := b.Guard(10 * time.Millisecond)
	defer disarm()
	start := time.Now()
	buf := make([]byte, 1<<20)
	for {
		if _, err = c.Write(buf); err != nil {
			break
		}
		if time.Since(start) > time.Minute {
			t.Fatal("writes still accepted after a minute: the peer reads")
		}
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Fatalf("the stuck write ended after %v, want about 2s", took)
	}
}
