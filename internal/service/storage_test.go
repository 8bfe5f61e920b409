package service_test

import (
	"io"
	"net/http"
	"strings"
	"sync"
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

// burst POSTs n requeues to the functions fns (in turn) at once, each with
// its own id, and counts the answers by status code.
func (b *bundle) burst(t *testing.T, n int, fns []string, headers ...string) map[int]int {
	t.Helper()
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			req, err := http.NewRequest(http.MethodPost, b.api.URL+"/deadletter/"+fns[i%len(fns)], strings.NewReader("x"))
			if err != nil {
				t.Error(err)
				return
			}
			req.Header.Set("Authorization", "Bearer "+apiToken)
			for j := 0; j+1 < len(headers); j += 2 {
				req.Header.Add(headers[j], headers[j+1])
			}
			<-start
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			mu.Lock()
			codes[res.StatusCode]++
			mu.Unlock()
		})
	}
	close(start)
	wg.Wait()
	return codes
}

// A review's attack: 100 requeues at once with max_waiting_per_function 5
// were all answered 202, because the quotas counted from the status index,
// which learns of a message a moment after it is stored. Each requeue now
// reserves its place before it is stored: exactly 5 are accepted, the rest
// refused, whichever of a function's two names ("fn", "fn.openfaas-fn")
// they use. Instant dead letters (X-Retries above X-Max-Retries) count
// against the same quotas, so a burst of them cannot fill the dead-letter
// store either.
func TestRequeueQuotaBurst(t *testing.T) {
	env := map[string]string{"max_waiting": "20", "max_waiting_per_function": "5"}
	forEachBackendWith(t, env, func(t *testing.T, b *bundle) {
		codes := b.burst(t, 100, []string{"busy", "busy.openfaas-fn"}, "X-Delay-Duration", "3600")
		if codes[http.StatusAccepted] != 5 || codes[http.StatusTooManyRequests] != 95 {
			t.Fatalf("100 requeues at once with max_waiting_per_function 5 answered %v, want 5 x 202 and 95 x 429", codes)
		}
		poll.Until(t, 10*time.Second, "five messages counted", func() bool {
			return metricstest.Sum(t, b.apiReg, "mailbox_waiting") == 5
		})
		if code, a, _ := b.requeue(t, "busy.openfaas-fn", []byte("x"), "X-Delay-Duration", "3600"); code != http.StatusTooManyRequests {
			t.Fatalf("a requeue once the five are counted answered %d %+v, want 429", code, a)
		}

		codes = b.burst(t, 100, []string{"junk", "junk.openfaas-fn"}, "X-Retries", "5", "X-Max-Retries", "1")
		if codes[http.StatusOK] != 5 || codes[http.StatusTooManyRequests] != 95 {
			t.Fatalf("100 instant dead letters at once with max_waiting_per_function 5 answered %v, want 5 x 200 and 95 x 429", codes)
		}
		junk := 0
		for _, e := range b.nats.DeadLetters(t) {
			if strings.HasPrefix(e.Function, "junk") {
				junk++
			}
		}
		if junk != 5 {
			t.Fatalf("%d dead letters of junk stored, want 5", junk)
		}
	})
}

// "fn" and "fn.openfaas-fn" are one function: a requeue of a message
// waiting under one name is a repeat under the other.
func TestRepeatUnderTheQualifiedName(t *testing.T) {
	env := map[string]string{"max_waiting_per_function": "100"}
	forEachBackendWith(t, env, func(t *testing.T, b *bundle) {
		b.mustSchedule(t, "fn", []byte("x"), "X-Mailbox-Message-Id", "one", "X-Delay-Duration", "3600")
		poll.Until(t, 10*time.Second, "the message counted", func() bool {
			return metricstest.Sum(t, b.apiReg, "mailbox_waiting") == 1
		})
		code, a, _ := b.requeue(t, "fn.openfaas-fn", []byte("x"), "X-Mailbox-Message-Id", "one", "X-Delay-Duration", "3600")
		if code != http.StatusOK || a.Status != "repeat" {
			t.Fatalf("the same message under the qualified name answered %d %+v, want 200 repeat", code, a)
		}
	})
}
