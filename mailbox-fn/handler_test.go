package function

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/logtest"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/stanserver/stanservertest"
)

// newHandler calls New and closes what it opened when the test ends.
func newHandler(t *testing.T, environ ...string) http.Handler {
	t.Helper()
	h, closeFn, err := New(environ, io.Discard)
	if err != nil {
		t.Fatalf("New(%q) = %v", environ, err)
	}
	if h == nil || closeFn == nil {
		t.Fatalf("New(%q) returned a nil handler or close", environ)
	}
	t.Cleanup(func() { _ = closeFn() })
	return h
}

func serve(h http.Handler, method, path, body string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
	return rec
}

func TestNewServesRequeueOnEmbeddedServer(t *testing.T) {
	t.Parallel()
	nats := stanservertest.Start(t)
	h := newHandler(t, "nats_url="+nats.URL(), "channel_prefix=fntest")
	poll.Until(t, 15*time.Second, "/healthz answers 200", func() bool {
		return serve(h, http.MethodGet, "/healthz", "").Code == http.StatusOK
	})

	rec := serve(h, http.MethodPost, "/deadletter/fn", "payload")
	var a struct {
		Status string `json:"status"`
		ID     string `json:"id"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &a); err != nil {
		t.Fatalf("answer %d is not JSON: %q", rec.Code, rec.Body)
	}
	id := rec.Header().Get(envelope.HeaderMessageID)
	if rec.Code != http.StatusAccepted || a.Status != "scheduled" || id == "" || id != a.ID {
		t.Fatalf("POST /deadletter/fn answered %d %s %q %s, want 202 scheduled with the id in header and body",
			rec.Code, envelope.HeaderMessageID, id, rec.Body)
	}
}

func TestNewRejectsInvalidEnvironment(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		env     string
		setting string
	}{
		{"max_retries_limit=-1", "max_retries_limit"},
		{"backend=kafka", "backend"},
		{"max_inflight=abc", "max_inflight"},
		// The function cannot embed a server.
		{"nats_url=", "nats_url"},
	} {
		h, closeFn, err := New([]string{"nats_url=nats://127.0.0.1:1", tc.env}, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.setting) {
			t.Errorf("New(%q) = %v, want an error naming %s", tc.env, err, tc.setting)
		}
		if h != nil || closeFn != nil {
			t.Errorf("New(%q) returned a handler or close with its error", tc.env)
			if closeFn != nil {
				_ = closeFn()
			}
		}
	}
}

func TestNewStartsWhileNATSIsDown(t *testing.T) {
	t.Parallel()
	// A port that was free a moment ago: nobody listens on it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	var logs logtest.Buffer
	h, closeFn, err := New([]string{"nats_url=nats://" + addr}, &logs)
	if err != nil {
		t.Fatalf("New = %v, want a handler while NATS is down", err)
	}
	t.Cleanup(func() { _ = closeFn() })
	// Past the first connection attempt, not merely before it.
	poll.Until(t, 15*time.Second, "a failed connection attempt logged", func() bool {
		return strings.Contains(logs.String(), "cannot connect to NATS Streaming")
	})
	if rec := serve(h, http.MethodGet, "/healthz", ""); rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("/healthz answered %d, want 503 while NATS is down", rec.Code)
	}
	rec := serve(h, http.MethodPost, "/deadletter/fn", "payload")
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("POST /deadletter/fn answered %d, Retry-After %q, body %s; want 503 with Retry-After",
			rec.Code, rec.Header().Get("Retry-After"), rec.Body)
	}
}
