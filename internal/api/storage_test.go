package api

import (
	"context"
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

func (q *memQueue) CheckQuota(_ context.Context, e *envelope.Envelope) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.quotaFails != nil {
		return q.quotaFails(e)
	}
	return nil
}

// Past a quota a requeue is refused, naming the quota, with nothing
// stored: 507 for the quotas on all waiting messages, 429 for one
// function's.
func TestRequeueQuota(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		header http.Header
		err    *queue.QuotaError
		refuse string // the function whose message is refused
		want   int
	}{
		{"overall count", nil, &queue.QuotaError{Quota: queue.QuotaWaiting, Limit: 10}, "fn", http.StatusInsufficientStorage},
		{"overall bytes", nil, &queue.QuotaError{Quota: queue.QuotaWaitingBytes, Limit: 1000}, "fn", http.StatusInsufficientStorage},
		{"per function", nil, &queue.QuotaError{Quota: queue.QuotaWaitingPerFunction, Limit: 5, Function: "fn"}, "fn", http.StatusTooManyRequests},
		// An instant dead letter routed to a function past its quota:
		// nothing stored, not even the dead letter.
		{"route", http.Header{"X-Retries": {"5"}, "X-Max-Retries": {"1"}, "X-Dead-Letter-Function": {"dlq"}},
			&queue.QuotaError{Quota: queue.QuotaWaitingPerFunction, Limit: 5, Function: "dlq"}, "dlq", http.StatusTooManyRequests},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			b.queue.quotaFails = func(e *envelope.Envelope) error {
				if e.Function == tc.refuse {
					return tc.err
				}
				return nil
			}
			w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), tc.header)
			m := wantError(t, w, tc.want, "")
			if m["quota"] != tc.err.Quota || m["limit"] != float64(tc.err.Limit) {
				t.Errorf("answer %v, want quota %s, limit %d", m, tc.err.Quota, tc.err.Limit)
			}
			if tc.err.Function != "" && m["function"] != tc.err.Function {
				t.Errorf("answer %v, want function %s", m, tc.err.Function)
			}
			wantNothingStored(t, b.queue)
		})
	}
	// Below the quotas the requeue is stored.
	b := setup(t, nil)
	b.queue.quotaFails = func(*envelope.Envelope) error { return nil }
	if w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), nil); w.Code != http.StatusAccepted {
		t.Fatalf("status = %d under the quotas, want 202", w.Code)
	}
}

// A requeue the quota check finds already waiting (NATS Streaming, which
// would store it again and count it once) is answered as a repeat too.
func TestRequeueRepeatFoundByQuotaCheck(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.queue.quotaFails = func(*envelope.Envelope) error { return fmt.Errorf("index: %w", queue.ErrRepeat) }
	w := b.do(http.MethodPost, "/deadletter/fn", []byte("again"), http.Header{envelope.HeaderMessageID: {"m-1"}})
	if m := decodeJSON(t, w); w.Code != http.StatusOK || m["repeat"] != true {
		t.Fatalf("answer %d %v, want 200 repeat", w.Code, m)
	}
	wantNothingStored(t, b.queue)
}
