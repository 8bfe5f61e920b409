package httpserver_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/httpserver"
)

// bound is how long a test waits for the server to do what it must; it
// fails the test only when the server never does it, whatever the
// machine's speed.
const bound = 10 * time.Second

// start serves h with o on a loopback port until the test ends.
func start(t *testing.T, h http.Handler, o httpserver.Options) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httpserver.New(h, o)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// closedByServer returns a channel closed once the server closes conn:
// what it sent until then is read and dropped.
func closedByServer(conn net.Conn) <-chan struct{} {
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		_, _ = io.Copy(io.Discard, conn)
	}()
	return closed
}

// TestSlowBodyIsCutOff: a client that sends a body one byte at a time
// loses its connection once the read timeout has passed, instead of
// holding it and the handler's goroutine for as long as it likes.
func TestSlowBodyIsCutOff(t *testing.T) {
	t.Parallel()
	readErr := make(chan error, 1)
	addr := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		readErr <- err
		if err != nil {
			http.Error(w, "cannot read request body", http.StatusBadRequest)
		}
	}), httpserver.Options{ReadTimeout: 200 * time.Millisecond})

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A million bytes at one per 20 ms would take five and a half hours.
	if _, err := fmt.Fprintf(conn, "POST /deadletter/fn HTTP/1.1\r\nHost: mailbox\r\nContent-Length: 1000000\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if _, err := conn.Write([]byte("x")); err != nil {
					return
				}
			}
		}
	}()
	closed := closedByServer(conn)
	select {
	case <-closed:
	case <-time.After(bound):
		t.Fatalf("the server still held the dribbling connection after %s", bound)
	}
	select {
	case err := <-readErr:
		if err == nil {
			t.Fatal("the handler read the whole body, want a read error")
		}
	case <-time.After(bound):
		t.Fatal("the handler never returned from reading the body")
	}
}

// TestSlowReaderIsCutOff: a client that never reads the answer does not
// hold the handler writing it for ever.
func TestSlowReaderIsCutOff(t *testing.T) {
	t.Parallel()
	writeErr := make(chan error, 1)
	addr := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 1<<20)
		for {
			if _, err := w.Write(chunk); err != nil {
				writeErr <- err
				return
			}
		}
	}), httpserver.Options{WriteTimeout: 200 * time.Millisecond})

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := fmt.Fprintf(conn, "GET /metrics HTTP/1.1\r\nHost: mailbox\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	// The client reads nothing until the handler has given up.
	select {
	case err := <-writeErr:
		if err == nil {
			t.Fatal("want a write error")
		}
	case <-time.After(bound):
		t.Fatalf("the handler was still writing to a client that reads nothing after %s", bound)
	}
}

// TestIdleConnectionIsClosed: a kept-alive connection that sends no new
// request is closed after the idle timeout.
func TestIdleConnectionIsClosed(t *testing.T) {
	t.Parallel()
	addr := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}), httpserver.Options{IdleTimeout: 200 * time.Millisecond})

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := fmt.Fprintf(conn, "GET /healthz HTTP/1.1\r\nHost: mailbox\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.Close {
		t.Fatal("the server closed the connection after the answer: want it kept alive, then closed when idle")
	}
	closed := make(chan error, 1)
	go func() {
		_, err := br.ReadByte()
		closed <- err
	}()
	select {
	case err := <-closed:
		if !errors.Is(err, io.EOF) {
			t.Logf("idle connection ended with %v", err)
		}
	case <-time.After(bound):
		t.Fatalf("the server still kept the idle connection after %s", bound)
	}
}

// TestLargeHeaderIs431: headers past the limit are refused with 431
// before the handler runs.
func TestLargeHeaderIs431(t *testing.T) {
	t.Parallel()
	called := make(chan struct{}, 1)
	addr := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		called <- struct{}{}
	}), httpserver.Options{})

	req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/deadletter/fn", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	// Above the 64 KiB limit (and the 4 KiB net/http adds to it), below
	// net/http's own default of 1 MiB.
	req.Header.Set("X-Big", strings.Repeat("a", httpserver.DefaultMaxHeaderBytes+8<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("status %d, want 431", resp.StatusCode)
	}
	select {
	case <-called:
		t.Fatal("the handler ran")
	default:
	}

	// Below the limit is served.
	req.Header.Set("X-Big", strings.Repeat("a", httpserver.DefaultMaxHeaderBytes/2))
	req.Body = io.NopCloser(strings.NewReader("x"))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d with headers under the limit, want 200", resp.StatusCode)
	}
}

// TestDefaults: every bound is set when Options leaves it zero.
func TestDefaults(t *testing.T) {
	t.Parallel()
	s := httpserver.New(http.NotFoundHandler(), httpserver.Options{})
	if s.ReadTimeout <= 0 || s.WriteTimeout <= 0 || s.IdleTimeout <= 0 || s.ReadHeaderTimeout <= 0 || s.MaxHeaderBytes <= 0 {
		t.Fatalf("server has an unbounded setting: read %s, write %s, idle %s, read header %s, max header bytes %d",
			s.ReadTimeout, s.WriteTimeout, s.IdleTimeout, s.ReadHeaderTimeout, s.MaxHeaderBytes)
	}
	if s.ReadHeaderTimeout > s.ReadTimeout {
		t.Fatalf("ReadHeaderTimeout %s is above ReadTimeout %s", s.ReadHeaderTimeout, s.ReadTimeout)
	}
}
