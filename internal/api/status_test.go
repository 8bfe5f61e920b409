package api

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/status"
)

// recorded waits for the status the API records in the background.
func (b *bundle) recorded(t *testing.T, id string) status.Status {
	t.Helper()
	var s status.Status
	poll.Until(t, 5*time.Second, "status of "+id+" recorded", func() bool {
		var ok bool
		s, ok = b.queue.status(id)
		return ok
	})
	return s
}

func TestRequeueRecordsWaiting(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), http.Header{
		envelope.HeaderMessageID: {"m1"}, envelope.HeaderRetries: {"2"}, envelope.HeaderDelay: {"30"},
	})
	if w.Code != http.StatusAccepted {
		t.Fatalf("requeue answered %d %s", w.Code, w.Body)
	}
	s := b.recorded(t, "m1")
	want := status.Status{ID: "m1", Function: "fn", State: status.Waiting, Retries: 2, Bytes: 1,
		DueAt: testNow.Add(30 * time.Second).UTC(), AcceptedAt: testNow.UTC(), UpdatedAt: testNow.UTC()}
	if s != want {
		t.Fatalf("recorded %+v, want %+v", s, want)
	}

	// GET answers it.
	w = b.do(http.MethodGet, "/messages/m1", nil, nil)
	if w.Code != http.StatusOK {
		t.Fatalf("GET answered %d %s", w.Code, w.Body)
	}
	m := decodeJSON(t, w)
	for k, v := range map[string]any{
		"id": "m1", "function": "fn", "status": "waiting", "retries": 2.0,
		"due_at":      "2025-03-04T04:06:37.123456789Z",
		"accepted_at": "2025-03-04T04:06:07.123456789Z", "updated_at": "2025-03-04T04:06:07.123456789Z",
	} {
		if m[k] != v {
			t.Errorf("%s = %v, want %v (body %s)", k, m[k], v, w.Body)
		}
	}
	for _, k := range []string{"reason", "route", "callback", "kind", "last_status"} {
		if _, ok := m[k]; ok {
			t.Errorf("%s present in %s", k, w.Body)
		}
	}
}

func TestRequeueAboveMaxRecordsDeadLetteredAndRoute(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), http.Header{
		envelope.HeaderMessageID: {"m2"}, envelope.HeaderRetries: {"4"}, envelope.HeaderMaxRetries: {"3"},
		envelope.HeaderDeadLetterFunction: {"graveyard"},
	})
	if w.Code != http.StatusOK {
		t.Fatalf("requeue answered %d %s", w.Code, w.Body)
	}
	if s := b.recorded(t, "m2"); s.State != status.DeadLettered || s.Reason != envelope.ReasonMaxRetries || s.Route != "m2-dl" {
		t.Fatalf("recorded %+v", s)
	}
	if s := b.recorded(t, "m2-dl"); s.State != status.Waiting || s.Function != "graveyard" || s.Kind != envelope.KindDeadLetter {
		t.Fatalf("route recorded %+v", s)
	}
	m := decodeJSON(t, b.do(http.MethodGet, "/messages/m2", nil, nil))
	if m["status"] != "dead-lettered" || m["reason"] != "max-retries" || m["route"] != "m2-dl" {
		t.Fatalf("GET answered %v", m)
	}
	if _, ok := m["due_at"]; ok {
		t.Fatalf("a dead letter has a due_at: %v", m)
	}
	if m := decodeJSON(t, b.do(http.MethodGet, "/messages/m2-dl", nil, nil)); m["status"] != "waiting" || m["kind"] != "dead-letter" {
		t.Fatalf("GET of the route answered %v", m)
	}
}

func TestStatusOfDelivered(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	at := testNow.UTC()
	_ = b.queue.RecordStatus(context.Background(), status.Status{ID: "m3", Function: "fn", State: status.Delivered,
		Retries: 1, LastStatus: 202, AcceptedAt: at, UpdatedAt: at.Add(time.Second), ExpiresAt: at.Add(24 * time.Hour)})
	w := b.do(http.MethodGet, "/messages/m3", nil, nil)
	m := decodeJSON(t, w)
	if w.Code != http.StatusOK || m["status"] != "delivered" || m["last_status"] != 202.0 || m["retries"] != 1.0 ||
		m["updated_at"] != "2025-03-04T04:06:08.123456789Z" || m["expires_at"] != "2025-03-05T04:06:07.123456789Z" {
		t.Fatalf("GET answered %d %s", w.Code, w.Body)
	}
	// HEAD is a GET without the body.
	if w := b.do(http.MethodHead, "/messages/m3", nil, nil); w.Code != http.StatusOK {
		t.Fatalf("HEAD answered %d", w.Code)
	}
}

func TestStatusUnknownIs404(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *Options) { o.StatusRetention = 2 * time.Hour })
	m := wantError(t, b.do(http.MethodGet, "/messages/nobody", nil, nil), http.StatusNotFound, "")
	if want := "no status for message nobody: unknown, or ended more than 2h0m0s ago"; m["error"] != want {
		t.Fatalf("error %q, want %q", m["error"], want)
	}
}

func TestStatusBadIDIs400(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	id64 := strings.Repeat("a", 64)
	for _, target := range []string{"/messages", "/messages/", "/messages/a%2Fb", "/messages/a/b", "/messages/%61",
		"/messages/a.b", "/messages/" + id64 + "x", "/messages/" + id64 + "-xx"} {
		wantError(t, b.do(http.MethodGet, target, nil, nil), http.StatusBadRequest, "id")
	}
	// A 64-character id's route and callback have ids of 67.
	for _, target := range []string{"/messages/" + id64, "/messages/" + id64 + "-dl", "/messages/" + id64 + "-cb", "/messages/a_B-9"} {
		wantError(t, b.do(http.MethodGet, target, nil, nil), http.StatusNotFound, "")
	}
}

func TestStatusWhileQueueUnavailableIs503(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.queue.statusErr = queue.ErrUnavailable
	w := b.do(http.MethodGet, "/messages/m", nil, nil)
	wantError(t, w, http.StatusServiceUnavailable, "")
	if w.Header().Get("Retry-After") != retryAfterSeconds {
		t.Fatalf("Retry-After = %q", w.Header().Get("Retry-After"))
	}
}

func TestStatusOtherMethodsAre405(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch} {
		w := b.do(method, "/messages/m", nil, nil)
		wantError(t, w, http.StatusMethodNotAllowed, "")
		if got := w.Header().Get("Allow"); got != "GET, HEAD" {
			t.Fatalf("%s: Allow = %q", method, got)
		}
	}
}

func TestStatusThatCannotBeStoredDoesNotFailTheRequeue(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.queue.mu.Lock()
	b.queue.statusErr = queue.ErrUnavailable
	b.queue.mu.Unlock()
	if w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), nil); w.Code != http.StatusAccepted {
		t.Fatalf("requeue answered %d %s", w.Code, w.Body)
	}
	dropped, err := status.DroppedCounter(b.reg)
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 5*time.Second, "mailbox_status_dropped_total = 1", func() bool { return testutil.ToFloat64(dropped) == 1 })
}

// TestStatusesOff: on a queue without statuses a requeue is accepted and
// records nothing, and GET /messages/<id> answers 404 saying why, not
// that the message is unknown.
func TestStatusesOff(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *Options) { o.Queue = queue.WithoutStatuses(o.Queue) })
	w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), http.Header{envelope.HeaderMessageID: {"m1"}})
	if w.Code != http.StatusAccepted {
		t.Fatalf("requeue answered %d %s", w.Code, w.Body)
	}
	if s, ok := b.queue.status("m1"); ok {
		t.Fatalf("recorded %+v with statuses off", s)
	}
	m := wantError(t, b.do(http.MethodGet, "/messages/m1", nil, nil), http.StatusNotFound, "")
	if msg := m["error"].(string); !strings.Contains(msg, "statuses=false") {
		t.Fatalf("error %q does not say statuses are off", msg)
	}
	families, err := b.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "mailbox_waiting" {
			t.Error("mailbox_waiting exported with statuses off: it would look like an outage")
		}
	}
}
