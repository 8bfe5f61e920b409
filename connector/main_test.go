package main

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
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
