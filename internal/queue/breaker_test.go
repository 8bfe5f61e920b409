package queue_test

import (
	"errors"
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

// A guard armed on one connection never closes the one the client dialed
// after it (a reconnect while the write was under way): it closes the
// connection the write was on. Fault in the first version: Break closed
// whichever connection was dialed last, so a late guard broke a healthy
// new connection.
func TestBreakerSparesANewConnection(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never read, until the listener closes
		}
	}()
	var b queue.Breaker
	old, err := b.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	disarm := b.Guard(10 * time.Millisecond)
	defer disarm()
	fresh, err := b.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	// The guard fires about 2 s later and closes old: a read on a closed
	// connection fails at once with net.ErrClosed.
	_ = old.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := old.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("the guarded connection: read %v, want it closed by the guard", err)
	}
	if _, err := fresh.Write([]byte("x")); err != nil {
		t.Fatalf("the guard broke the connection dialed after it: %v", err)
	}
}
