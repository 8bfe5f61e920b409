package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/jsserver/jsservertest"
	"github.com/openfaas/mailbox/internal/poll"
)

func TestRunRejectsBadSettings(t *testing.T) {
	defer slog.SetDefault(slog.Default())
	for _, tc := range []struct {
		env  []string
		want string
	}{
		{[]string{"nats_url="}, "nats_url"},
		{[]string{"backend=kafka"}, "backend"},
		{[]string{"basic_auth=true", "secret_mount_path=" + t.TempDir()}, "secret_mount_path"},
		{[]string{"max_inflight=0"}, "max_inflight"},
		{[]string{"metrics_auth=true"}, "metrics_auth"},
		{[]string{"read_timeout=0"}, "read_timeout"},
	} {
		err := run(context.Background(), tc.env, &bytes.Buffer{}, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run with %v: %v, want an error naming %s", tc.env, err, tc.want)
		}
	}
}

func TestRunServesHealthAndMetricsUntilCancelled(t *testing.T) {
	defer slog.SetDefault(slog.Default())
	nats := jsservertest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addrs := make(chan string, 1)
	done := make(chan error, 1)
	env := []string{"backend=jetstream", "nats_url=" + nats.URL(), "listen=127.0.0.1:0", "gateway_url=http://127.0.0.1:1"}
	go func() { done <- run(ctx, env, &bytes.Buffer{}, func(a string) { addrs <- a }) }()
	var addr string
	select {
	case addr = <-addrs:
	case err := <-done:
		t.Fatalf("run returned before listening: %v", err)
	}
	get := func(path string) int {
		res, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0
		}
		res.Body.Close()
		return res.StatusCode
	}
	poll.Until(t, 15*time.Second, "healthy once NATS is connected", func() bool { return get("/healthz") == http.StatusOK })
	if code := get("/metrics"); code != http.StatusOK {
		t.Fatalf("/metrics answered %d", code)
	}
	nats.Stop()
	poll.Until(t, 15*time.Second, "unhealthy without NATS", func() bool { return get("/healthz") == http.StatusServiceUnavailable })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run after cancel: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return after cancel")
	}
}

// startConnector runs the connector with env on an embedded JetStream
// server until the test ends and returns its listen address.
func startConnector(t *testing.T, env ...string) string {
	t.Helper()
	nats := jsservertest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan string, 1)
	done := make(chan error, 1)
	env = append([]string{"backend=jetstream", "nats_url=" + nats.URL(), "listen=127.0.0.1:0", "gateway_url=http://127.0.0.1:1"}, env...)
	go func() { done <- run(ctx, env, &bytes.Buffer{}, func(a string) { addrs <- a }) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case addr := <-addrs:
		return addr
	case err := <-done:
		t.Fatalf("run returned before listening: %v", err)
		return ""
	}
}

// TestRunMetricsAuth: with metrics_auth, /metrics needs the bearer token;
// /healthz stays open for probes.
func TestRunMetricsAuth(t *testing.T) {
	defer slog.SetDefault(slog.Default())
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mailbox-token"), []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := startConnector(t, "metrics_auth=true", "auth_token_secret=mailbox-token", "secret_mount_path="+dir)
	get := func(path, token string) int {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0
		}
		res.Body.Close()
		return res.StatusCode
	}
	poll.Until(t, 15*time.Second, "healthy once NATS is connected", func() bool { return get("/healthz", "") == http.StatusOK })
	for path, want := range map[[2]string]int{
		{"/metrics", ""}:        http.StatusUnauthorized,
		{"/_metrics", ""}:       http.StatusUnauthorized,
		{"/metrics", "wrong"}:   http.StatusUnauthorized,
		{"/metrics", "s3cret"}:  http.StatusOK,
		{"/_metrics", "s3cret"}: http.StatusOK,
	} {
		if got := get(path[0], path[1]); got != want {
			t.Errorf("GET %s with token %q: %d, want %d", path[0], path[1], got, want)
		}
	}
}

// TestRunCutsOffSlowBody: a client sending its request one byte at a time
// loses the connection after read_timeout. The body is under the 256 KiB
// net/http reads past a handler that ignores it, which is what would hold
// the connection.
func TestRunCutsOffSlowBody(t *testing.T) {
	defer slog.SetDefault(slog.Default())
	addr := startConnector(t, "read_timeout=200ms")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("POST /healthz HTTP/1.1\r\nHost: c\r\nContent-Length: 100000\r\n\r\n")); err != nil {
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
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		_, _ = io.Copy(io.Discard, conn)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the connector still held the dribbling connection after 10s")
	}
}
