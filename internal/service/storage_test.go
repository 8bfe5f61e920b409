package service_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/metricstest"
	"github.com/openfaas/mailbox/internal/poll"
)

// The same X-Mailbox-Message-Id requeued for two functions was answered
// 202 twice and delivered once (JetStream): ids are scoped to their
// function, so both are delivered. The same requeue repeated is stored
// once and answered 200 "repeat" (on NATS Streaming, once the status
// index has read the first; before, both are stored and delivered).
func TestIDsScopedToFunctionAndRepeats(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		one := b.deploy("one", nil, nil)
		two := b.deploy("two", nil, nil)
		for _, fn := range []string{"one", "two"} {
			b.mustSchedule(t, fn, []byte("x"), "X-Mailbox-Message-Id", "shared", "X-Delay-Duration", "1")
		}
		code, a, _ := b.requeue(t, "one", []byte("again"), "X-Mailbox-Message-Id", "shared", "X-Delay-Duration", "1")
		// JetStream always finds the repeat; NATS Streaming finds it once
		// its status index has read the first one's status, and otherwise
		// stores it as well.
		wantCalls := 1
		switch {
		case code == http.StatusOK && a.Status == "repeat" && a.ID == "shared":
		case b.cfg.Backend == "stan" && code == http.StatusAccepted:
			wantCalls = 2
		default:
			t.Fatalf("repeat answered %d %+v, want 200 repeat", code, a)
		}
		b.startConnector(t)
		poll.Until(t, 20*time.Second, "both functions called", func() bool {
			return len(callsWith(one, "shared")) >= wantCalls && len(callsWith(two, "shared")) == 1
		})
		b.mustSchedule(t, "two", []byte("marker"), "X-Mailbox-Message-Id", "marker", "X-Delay-Duration", "1")
		poll.Until(t, 20*time.Second, "marker delivered", func() bool { return len(callsWith(two, "marker")) == 1 })
		if n := len(callsWith(one, "shared")); n != wantCalls {
			t.Fatalf("one called %d times with the shared id, want %d", n, wantCalls)
		}
	})
}

// Past a quota a requeue is refused with the quota named: 429 for one
// function's, 507 for all messages; another function is still accepted
// until the overall quota.
func TestRequeueQuotas(t *testing.T) {
	env := map[string]string{"max_waiting": "3", "max_waiting_per_function": "2"}
	forEachBackendWith(t, env, func(t *testing.T, b *bundle) {
		for range 2 {
			b.mustSchedule(t, "busy", []byte("x"), "X-Delay-Duration", "3600")
		}
		// The quotas count what the statuses say, a moment later.
		poll.Until(t, 10*time.Second, "two messages counted", func() bool {
			return metricstest.Sum(t, b.apiReg, "mailbox_waiting") == 2
		})
		var code int
		var a answer
		poll.Until(t, 10*time.Second, "a third requeue to busy refused", func() bool {
			code, a, _ = b.requeue(t, "busy", []byte("x"), "X-Delay-Duration", "3600")
			return code == http.StatusTooManyRequests
		})
		b.mustSchedule(t, "quiet", []byte("x"), "X-Delay-Duration", "3600")
		poll.Until(t, 10*time.Second, "three messages counted", func() bool {
			return metricstest.Sum(t, b.apiReg, "mailbox_waiting") == 3
		})
		poll.Until(t, 10*time.Second, "a requeue past max_waiting refused", func() bool {
			code, a, _ = b.requeue(t, "other", []byte("x"), "X-Delay-Duration", "3600")
			return code == http.StatusInsufficientStorage
		})
		if a.Error == "" {
			t.Fatalf("507 answer %+v names nothing", a)
		}
	})
}
