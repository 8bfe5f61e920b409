package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestLoadConfig(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		env  []string
		want config
	}{
		{nil, config{listen: "127.0.0.1:8082", grace: 10 * time.Second, drain: 10 * time.Second, read: 10 * time.Second}},
		{[]string{"upstream_url=http://127.0.0.1:9000/", "write_timeout=30s"},
			config{listen: "127.0.0.1:9000", grace: 30 * time.Second, drain: 30 * time.Second, read: 10 * time.Second}},
		{[]string{"write_timeout=15", "healthcheck_interval=2s", "read_timeout=5"},
			config{listen: "127.0.0.1:8082", grace: 2 * time.Second, drain: 15 * time.Second, read: 5 * time.Second}},
		{[]string{"upstream_url=", "write_timeout=", "read_timeout="},
			config{listen: "127.0.0.1:8082", grace: 10 * time.Second, drain: 10 * time.Second, read: 10 * time.Second}},
	} {
		got, err := loadConfig(tc.env)
		if err != nil || got != tc.want {
			t.Errorf("loadConfig(%q) = %+v, %v; want %+v", tc.env, got, err, tc.want)
		}
	}
}

func TestLoadConfigRejectsBadValues(t *testing.T) {
	t.Parallel()
	for env, setting := range map[string]string{
		"upstream_url=127.0.0.1:8082":          "upstream_url",
		"upstream_url=https://127.0.0.1:8082":  "upstream_url",
		"upstream_url=http://127.0.0.1":        "upstream_url",
		"upstream_url=http://127.0.0.1:8082/x": "upstream_url",
		"write_timeout=soon":                   "write_timeout",
		"write_timeout=-1":                     "write_timeout",
		"healthcheck_interval=-1s":             "healthcheck_interval",
		"read_timeout=soon":                    "read_timeout",
		"read_timeout=0":                       "read_timeout",
		"write_timeout=0":                      "write_timeout",
	} {
		if _, err := loadConfig([]string{env}); err == nil || !strings.Contains(err.Error(), setting) {
			t.Errorf("loadConfig(%q) = %v, want an error naming %s", env, err, setting)
		}
	}
}

// TestServeDrains checks the shutdown order: after the signal, requests
// are still served for the grace period, then the listener closes and a
// request in flight finishes before serve returns.
func TestServeDrains(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			started <- struct{}{}
			<-release
		}
		_, _ = io.WriteString(w, "ok")
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	cfg := config{listen: "127.0.0.1:0", grace: 300 * time.Millisecond, drain: 5 * time.Second}
	go func() { done <- serve(ctx, cfg, h, io.Discard, func(a string) { addrc <- a }) }()
	base := "http://" + <-addrc

	slow := make(chan int, 1)
	go func() {
		res, err := http.Get(base + "/slow")
		if err != nil {
			slow <- 0
			return
		}
		res.Body.Close()
		slow <- res.StatusCode
	}()
	<-started
	cancel()

	// Within the grace period: still served.
	if code := get(t, base+"/"); code != http.StatusOK {
		t.Fatalf("request during the grace period answered %d, want 200", code)
	}
	// After it: no longer accepted, while /slow is still in flight.
	time.Sleep(cfg.grace + 200*time.Millisecond)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	if res, err := client.Get(base + "/"); err == nil {
		res.Body.Close()
		t.Fatalf("request after the grace period answered %d, want refused", res.StatusCode)
	}
	select {
	case err := <-done:
		t.Fatalf("serve returned %v with a request in flight", err)
	default:
	}
	close(release)
	if code := <-slow; code != http.StatusOK {
		t.Fatalf("request in flight answered %d, want 200", code)
	}
	if err := <-done; err != nil {
		t.Fatalf("serve = %v, want nil after draining", err)
	}
}

func TestServeGivesUpDrainingAfterWriteTimeout(t *testing.T) {
	t.Parallel()
	started := make(chan struct{}, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-r.Context().Done()
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	cfg := config{listen: "127.0.0.1:0", grace: 0, drain: 200 * time.Millisecond}
	go func() { done <- serve(ctx, cfg, h, io.Discard, func(a string) { addrc <- a }) }()
	go func() {
		if res, err := http.Get("http://" + <-addrc); err == nil {
			res.Body.Close()
		}
	}()
	<-started
	cancel()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "draining") {
			t.Fatalf("serve = %v, want a draining error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serve did not give up draining")
	}
}

func TestServeReportsAnAddressInUse(t *testing.T) {
	t.Parallel()
	addrc := make(chan string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_ = serve(ctx, config{listen: "127.0.0.1:0"}, http.NotFoundHandler(), io.Discard, func(a string) { addrc <- a })
	}()
	addr := <-addrc
	err := serve(context.Background(), config{listen: addr}, http.NotFoundHandler(), io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), "upstream_url") {
		t.Fatalf("serve on a busy address = %v, want an error naming upstream_url", err)
	}
}

func get(t *testing.T, url string) int {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	res.Body.Close()
	return res.StatusCode
}

// serveForTest serves h with cfg until the test ends and returns the
// address.
func serveForTest(t *testing.T, cfg config, h http.Handler) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	cfg.listen = "127.0.0.1:0"
	go func() { done <- serve(ctx, cfg, h, io.Discard, func(a string) { addrc <- a }) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return <-addrc
}

// TestServeCutsOffSlowBody: a client sending its body one byte at a time
// loses the connection after read_timeout, instead of holding it and the
// handler's goroutine.
func TestServeCutsOffSlowBody(t *testing.T) {
	t.Parallel()
	readErr := make(chan error, 1)
	addr := serveForTest(t, config{read: 200 * time.Millisecond, drain: 5 * time.Second}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		readErr <- err
	}))
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A million bytes at one per 20 ms would take five and a half hours.
	if _, err := io.WriteString(conn, "POST / HTTP/1.1\r\nHost: fn\r\nContent-Length: 1000000\r\n\r\n"); err != nil {
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
		t.Fatal("the server still held the dribbling connection after 10s")
	}
	if err := <-readErr; err == nil {
		t.Fatal("the handler read the whole body, want a read error")
	}
}

// TestServeRefusesLargeHeaders: headers over the limit are answered 431.
func TestServeRefusesLargeHeaders(t *testing.T) {
	t.Parallel()
	addr := serveForTest(t, config{read: 5 * time.Second, drain: 5 * time.Second}, http.NotFoundHandler())
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	// Over 64 KiB and the 4 KiB net/http adds, under its 1 MiB default.
	req.Header.Set("X-Big", strings.Repeat("a", 72<<10))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("status %d, want 431", res.StatusCode)
	}
}
