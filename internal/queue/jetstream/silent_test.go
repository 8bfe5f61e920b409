package jetstream_test

import (
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/jsserver/jsservertest"
	"github.com/openfaas/mailbox/internal/logtest"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/queue/jetstream"
)

// A connection to a server that went silent, as one cut off by a network
// partition (nothing answers, nothing is closed), is given up within
// seconds, so that the client moves to another member of the cluster;
// nats.go's default pings would keep it for minutes, and a connector on
// it delivers nothing (test/chaos TestChaos/JetStreamCluster).
func TestSilentServerGivenUpQuickly(t *testing.T) {
	t.Parallel()
	srv := jsservertest.Start(t)
	p := startPartition(t, strings.TrimPrefix(srv.URL(), "nats://"))
	logs := &logtest.Buffer{}
	q, err := jetstream.Open(jetstream.Options{Options: queue.Options{
		URL:    "nats://" + p.ln.Addr().String(),
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	poll.Until(t, 10*time.Second, "client connects", q.Connected)

	p.Cut()
	cut := time.Now()
	// Three pings of 3 s unanswered, and slack for a loaded machine.
	poll.Until(t, 30*time.Second, "the silent connection given up", func() bool {
		return strings.Contains(logs.String(), "disconnected from NATS")
	})
	t.Logf("given up %s after the cut", time.Since(cut).Round(100*time.Millisecond))
}

// partition forwards TCP connections to a server until Cut, after which
// it drops every byte both ways and closes nothing: each side sees a
// live connection that never answers.
type partition struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  []net.Conn
}

func startPartition(t *testing.T, target string) *partition {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &partition{ln: ln, target: target}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go p.copy(s, c)
			go p.copy(c, s)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			c.Close()
		}
	})
	return p
}

// copy forwards src to dst until the cut, then reads and drops.
func (p *partition) copy(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		p.mu.Lock()
		cut := p.cut
		p.mu.Unlock()
		if n > 0 && !cut {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Cut starts dropping everything.
func (p *partition) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
}
