package service_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/poll"
)

// One requeue with X-Delay-Duration: 0 and X-Max-Retries: 10000 to a
// failing function made 836 calls in 5 s. Now the first call may come at
// once, but no retry comes sooner than min_retry_delay after the call
// before it (max_retries_limit raised to allow the header).
func TestOneRequestCannotMakeCallsBackToBack(t *testing.T) {
	const minimum = 400 * time.Millisecond
	env := map[string]string{"max_retries_limit": "10000", "min_retry_delay": "400ms"}
	forEachBackendWith(t, env, func(t *testing.T, b *bundle) {
		failing := b.deploy("failing", always(http.StatusInternalServerError), nil)
		b.mustSchedule(t, "failing", []byte("x"), "X-Delay-Duration", "0", "X-Max-Retries", "10000")
		stop := b.startConnector(t)
		poll.Until(t, 20*time.Second, "four calls", func() bool { return failing.Len() >= 4 })
		// No more calls to a function that keeps failing: other tests
		// run alongside, some of them timed.
		stop()
		calls := failing.Calls()
		for i := 1; i < len(calls); i++ {
			if gap := calls[i].At.Sub(calls[i-1].At); gap < minimum {
				t.Errorf("call %d came %v after the one before, want at least min_retry_delay %v", i+1, gap, minimum)
			}
		}
	})
}
