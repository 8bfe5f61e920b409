package api

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/queue"
)

// A requeue the backend already holds (the same function, id and
// X-Retries still waiting) was answered 202 while nothing was stored:
// it is answered 200 with "repeat": true, and records no new status.
func TestRequeueRepeat(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.queue.scheduleErr = fmt.Errorf("publish: %w", queue.ErrRepeat)
	w := b.do(http.MethodPost, "/deadletter/fn", []byte("again"), http.Header{envelope.HeaderMessageID: {"m-1"}})
	if w.Code != http.StatusOK {
		t.Fatalf("status = %d, want 200 (body %q)", w.Code, w.Body)
	}
	m := decodeJSON(t, w)
	if m["repeat"] != true || m["status"] != "repeat" || m["id"] != "m-1" || m["function"] != "fn" {
		t.Fatalf("answer %v, want status repeat, repeat true, id m-1, function fn", m)
	}
	if got := w.Header().Get(envelope.HeaderMessageID); got != "m-1" {
		t.Errorf("%s = %q, want m-1", envelope.HeaderMessageID, got)
	}
	if _, ok := b.queue.status("m-1"); ok {
		t.Errorf("a repeat recorded a status: the first one's stands")
	}
}
