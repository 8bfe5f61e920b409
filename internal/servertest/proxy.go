package servertest

import (
	"bytes"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// Proxy forwards TCP connections to a NATS server and, while
// stalled, holds every byte in both directions: the server looks alive
// (the connection stays open) but answers nothing, as a broker stuck on
// a slow disk or a saturated link.
type Proxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	stalled bool
	resume  chan struct{} // closed when a stall ends
	// dropping is a link that loses every byte, both ways, without
	// closing (Drop); dropped is what it lost.
	dropping bool
	dropped  []byte
	conns    []net.Conn
	// toClients counts the bytes forwarded from the server to clients.
	toClients atomic.Int64
}

// StartProxy forwards to the host:port of natsURL until the test ends.
func StartProxy(t testing.TB, natsURL string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: strings.TrimPrefix(natsURL, "nats://"), resume: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.forward(c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		p.Stall(false)
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			c.Close()
		}
	})
	return p
}

func (p *Proxy) URL() string { return "nats://" + p.ln.Addr().String() }

func (p *Proxy) forward(c net.Conn) {
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, c, s)
	p.mu.Unlock()
	go p.copy(s, c, nil)
	p.copy(c, s, &p.toClients)
}

// copy forwards from src to dst, holding what it read while stalled,
// and adds what it forwarded to count unless nil.
func (p *Proxy) copy(dst, src net.Conn, count *atomic.Int64) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		p.mu.Lock()
		stalled, resume, dropping := p.stalled, p.resume, p.dropping
		if dropping {
			p.dropped = append(p.dropped, buf[:n]...)
		}
		p.mu.Unlock()
		if stalled {
			<-resume
		}
		if n > 0 && !dropping {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
			if count != nil {
				count.Add(int64(n))
			}
		}
		if err != nil {
			return
		}
	}
}

// Stall starts (true) or ends (false) holding every byte.
func (p *Proxy) Stall(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if on == p.stalled {
		return
	}
	p.stalled = on
	if !on {
		close(p.resume)
		p.resume = make(chan struct{})
	}
}

// Break closes every connection, dropping what a stall held: writes the
// clients sent meanwhile never reach the server, as on a link that
// failed. Clients reconnect through the proxy.
func (p *Proxy) Break() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.dropping, p.dropped = false, nil
	if p.stalled {
		p.stalled = false
		close(p.resume)
		p.resume = make(chan struct{})
	}
}

// Drop starts losing every byte both ways, the connections left open,
// until Break.
func (p *Proxy) Drop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dropping = true
}

// Dropped reports whether the bytes lost since Drop contain b.
func (p *Proxy) Dropped(b []byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Contains(p.dropped, b)
}

// ToClients is how many bytes the proxy has forwarded from the server to
// its clients (what it dropped not counted).
func (p *Proxy) ToClients() int64 { return p.toClients.Load() }
