package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/status"
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

func (q *memQueue) Reserve(_ context.Context, claims ...status.Claim) (func(), error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, c := range claims {
		if q.quotaFails != nil {
			if err := q.quotaFails(c); err != nil {
				return nil, err
			}
		}
	}
	n := len(q.reserved)
	q.reserved = append(q.reserved, claims...)
	var once sync.Once
	return func() {
		once.Do(func() {
			q.mu.Lock()
			defer q.mu.Unlock()
			q.reserved = slices.Delete(q.reserved, n, n+len(claims))
		})
	}, nil
}

// A requeue reserves its place before it is stored, and gives it back
// when the store fails; an instant dead letter holds one too, and so does
// its route.
func TestRequeueReserves(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	if w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), http.Header{envelope.HeaderMessageID: {"m-1"}}); w.Code != http.StatusAccepted {
		t.Fatalf("status = %d, want 202", w.Code)
	}
	if len(b.queue.reserved) != 1 || b.queue.reserved[0] != (status.Claim{ID: "m-1", Function: "fn", Bytes: 1, Repeat: true}) {
		t.Fatalf("reserved %+v, want m-1 of fn, 1 byte, checked for a repeat", b.queue.reserved)
	}
	w := b.do(http.MethodPost, "/deadletter/fn", []byte("xy"), http.Header{
		envelope.HeaderMessageID: {"m-2"}, "X-Retries": {"5"}, "X-Max-Retries": {"1"}, "X-Dead-Letter-Function": {"dlq"}})
	if w.Code != http.StatusOK {
		t.Fatalf("instant dead letter answered %d, want 200", w.Code)
	}
	if got := b.queue.reserved[1:]; len(got) != 2 || !got[0].Hold || got[0].Function != "fn" || got[0].Bytes != 2 || got[1].Hold || got[1].Function != "dlq" {
		t.Fatalf("an instant dead letter reserved %+v, want its own place held and its route's", got)
	}
	b.queue.mu.Lock()
	b.queue.scheduleErr = errors.New("broker down")
	b.queue.mu.Unlock()
	if w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), nil); w.Code != http.StatusServiceUnavailable {
		t.Fatalf("a failed store answered %d, want 503", w.Code)
	}
	if len(b.queue.reserved) != 3 {
		t.Fatalf("a failed store kept its reservation: %+v", b.queue.reserved)
	}
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
			b.queue.quotaFails = func(c status.Claim) error {
				if c.Function == tc.refuse {
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
	b.queue.quotaFails = func(status.Claim) error { return nil }
	if w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), nil); w.Code != http.StatusAccepted {
		t.Fatalf("status = %d under the quotas, want 202", w.Code)
	}
}

// A requeue the quota check finds already waiting (NATS Streaming, which
// would store it again and count it once) is answered as a repeat too.
func TestRequeueRepeatFoundByQuotaCheck(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.queue.quotaFails = func(status.Claim) error { return fmt.Errorf("index: %w", queue.ErrRepeat) }
	w := b.do(http.MethodPost, "/deadletter/fn", []byte("again"), http.Header{envelope.HeaderMessageID: {"m-1"}})
	if m := decodeJSON(t, w); w.Code != http.StatusOK || m["repeat"] != true {
		t.Fatalf("answer %d %v, want 200 repeat", w.Code, m)
	}
	wantNothingStored(t, b.queue)
}

// A broker that refuses a write for want of storage (JetStream's
// "insufficient resources", a full disk) was answered like an unreachable
// one: 503 "queue unavailable", no cause. It is 507 naming the cause, with
// Retry-After, nothing stored and the reservation given back; a broker
// that did not answer in time is 503 "broker timeout", one unreachable
// 503 "broker unavailable", both with Retry-After.
func TestRequeueBrokerCauses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err        error
		code       int
		cause      string
		retryAfter string
	}{
		{fmt.Errorf("%w: publish to mailbox.delay: nats: insufficient resources", queue.ErrStorageFull), http.StatusInsufficientStorage, "broker storage full", "30"},
		{fmt.Errorf("%w: publish to mailbox.delay: context deadline exceeded", queue.ErrTimeout), http.StatusServiceUnavailable, "broker timeout", "5"},
		{fmt.Errorf("%w: publish to mailbox.delay: nats: connection closed", queue.ErrUnavailable), http.StatusServiceUnavailable, "broker unavailable", "5"},
	} {
		t.Run(tc.cause, func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			b.queue.quotaFails = func(status.Claim) error { return nil }
			b.queue.scheduleErr = tc.err
			w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), http.Header{envelope.HeaderMessageID: {"m-1"}})
			m := wantError(t, w, tc.code, "")
			if m["cause"] != tc.cause {
				t.Errorf("answer %v, want cause %q", m, tc.cause)
			}
			if got := w.Header().Get("Retry-After"); got != tc.retryAfter {
				t.Errorf("Retry-After = %q, want %q", got, tc.retryAfter)
			}
			if strings.Contains(w.Body.String(), "mailbox.delay") {
				t.Errorf("answer %q tells the broker's error to the caller", w.Body)
			}
			wantNothingStored(t, b.queue)
			if len(b.queue.reserved) != 0 {
				t.Errorf("the refused requeue kept its reservation: %+v", b.queue.reserved)
			}
			if _, ok := b.queue.status("m-1"); ok {
				t.Errorf("the refused requeue recorded a status")
			}
		})
	}
}

// With Storage set (the standalone binary's diskspace.Guard), a requeue
// the store has no room for is refused with 507 before anything is
// reserved or stored; once the check passes again, so does the requeue.
func TestRequeueStorageCheck(t *testing.T) {
	t.Parallel()
	var full atomic.Bool
	full.Store(true)
	b := setup(t, func(o *Options) {
		o.Storage = func() error {
			if full.Load() {
				return fmt.Errorf("%w: 1024 bytes free", queue.ErrStorageFull)
			}
			return nil
		}
	})
	reserveCalled := false
	b.queue.quotaFails = func(status.Claim) error { reserveCalled = true; return nil }
	w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), nil)
	m := wantError(t, w, http.StatusInsufficientStorage, "")
	if m["cause"] != "broker storage full" || w.Header().Get("Retry-After") == "" {
		t.Fatalf("answer %v (Retry-After %q), want cause broker storage full and Retry-After", m, w.Header().Get("Retry-After"))
	}
	if reserveCalled {
		t.Errorf("a requeue refused for want of storage reserved a place")
	}
	wantNothingStored(t, b.queue)
	full.Store(false)
	if w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), nil); w.Code != http.StatusAccepted {
		t.Fatalf("with room again: status %d, want 202 (body %q)", w.Code, w.Body)
	}
}
