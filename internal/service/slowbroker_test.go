package service_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/logtest"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/servertest"
)

// slowBrokerBound is how long a requeue may take against a broker that
// answers nothing: the publish timeout (5s, service.publishTimeout), plus
// the grace after which a write stuck on the connection breaks it (2s,
// queue.Breaker), plus the quota check's wait for its index
// (queue.QuotaWait), plus a margin for a busy machine.
const slowBrokerBound = 5*time.Second + 2*time.Second + queue.QuotaWait + 5*time.Second

// A broker that stops answering, its connection still open: requeues are
// answered 503 "broker timeout" (or "broker unavailable", once the client
// has given the connection up) with Retry-After within slowBrokerBound,
// none hangs, nothing is accepted; once the broker answers again, so do
// requeues, without a restart. 100 requeues of 256 KiB at once fill the
// socket buffers, so the client's writes block: they used to hold the
// connection's lock for nats.go's write timeout each, one after another,
// and all but a few requeues waited minutes.
func TestSlowBrokerAnswers503InTime(t *testing.T) {
	t.Parallel()
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			b, p := setupBehindProxy(t, backend)
			b.mustSchedule(t, "fn", []byte("before"), "X-Delay-Duration", "3600")

			p.Stall(true)
			const n = 100
			body := bytes.Repeat([]byte("x"), 256<<10)
			var wg sync.WaitGroup
			errs := make(chan error, n)
			for i := range n {
				wg.Go(func() {
					start := time.Now()
					code, cause, retryAfter, err := rawRequeueBody(b, "fn", "3600", body)
					took := time.Since(start)
					switch {
					case err != nil:
						errs <- err
					case took > slowBrokerBound:
						errs <- errors.New("requeue " + strconv.Itoa(i) + " took " + took.String() + ", more than " + slowBrokerBound.String())
					case code != http.StatusServiceUnavailable || retryAfter == "" ||
						(cause != "broker timeout" && cause != "broker unavailable"):
						errs <- errors.New("requeue " + strconv.Itoa(i) + " answered " + strconv.Itoa(code) + " cause " + cause + " Retry-After " + retryAfter + ", want 503 broker timeout or unavailable with Retry-After")
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			p.Stall(false)
			poll.Until(t, 30*time.Second, "a requeue accepted once the broker answers", func() bool {
				code, _, _, err := rawRequeue(b, "fn", "3600")
				return err == nil && code == http.StatusAccepted
			})
		})
	}
}

// rawRequeue POSTs a requeue to fn and returns its status, cause and
// Retry-After.
func rawRequeue(b *bundle, fn, delay string) (code int, cause, retryAfter string, err error) {
	return rawRequeueBody(b, fn, delay, []byte("x"))
}

// rawRequeueBody is rawRequeue with body.
func rawRequeueBody(b *bundle, fn, delay string, body []byte) (code int, cause, retryAfter string, err error) {
	req, err := http.NewRequest(http.MethodPost, b.api.URL+"/deadletter/"+fn, bytes.NewReader(body))
	if err != nil {
		return 0, "", "", err
	}
	req.Header.Set("Authorization", "Bearer "+apiToken)
	req.Header.Set("X-Delay-Duration", delay)
	// The client's own bound, far past slowBrokerBound: a hang fails the
	// test instead of stalling it.
	client := &http.Client{Timeout: 2 * time.Minute}
	res, err := client.Do(req)
	if err != nil {
		return 0, "", "", err
	}
	defer res.Body.Close()
	var a struct {
		Cause string `json:"cause"`
	}
	data, err := io.ReadAll(res.Body)
	if err != nil {
		return 0, "", "", err
	}
	_ = json.Unmarshal(data, &a)
	return res.StatusCode, a.Cause, res.Header.Get("Retry-After"), nil
}

// setupBehindProxy is setupWith reaching NATS through a servertest.Proxy.
func setupBehindProxy(t *testing.T, backend string) (*bundle, *servertest.Proxy) {
	t.Helper()
	var p *servertest.Proxy
	b := setupWith(t, backend, nil, t.TempDir(), func(natsURL string) string {
		p = servertest.StartProxy(t, natsURL)
		return p.URL()
	})
	return b, p
}

// A delivery whose outcome cannot be stored (the broker stalls just as
// the function fails, then the link breaks, so its retry never reaches
// the server) is not lost: the handler gives up, the message stays
// unacknowledged, and once the broker is reached again the original is
// delivered again (X-Retries 0, not the retry's 1) and completes.
func TestRetryNotStoredIsRedelivered(t *testing.T) {
	t.Parallel()
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			b, p := setupBehindProxy(t, backend)
			logs := &logtest.Buffer{}
			b.connectorLog = slog.New(slog.NewTextHandler(logs, nil))
			flaky := b.deploy("flaky", func(n int) int {
				if n == 1 {
					// The broker stalls while the function fails:
					// its retry cannot be stored.
					p.Stall(true)
					return http.StatusInternalServerError
				}
				return http.StatusOK
			}, nil)
			a := b.mustSchedule(t, "flaky", []byte("retry me"), "X-Delay-Duration", "1", "X-Max-Retries", "3")
			b.startConnector(t)
			poll.Until(t, 30*time.Second, "the connector gives up storing the retry", func() bool {
				return strings.Contains(logs.String(), "handler failed")
			})
			p.Break()
			poll.Until(t, 3*time.Minute, "the message delivered again", func() bool {
				return flaky.Len() >= 2
			})
			calls := callsWith(flaky, a.ID)
			if got := calls[1].Header.Get("X-Retries"); got != "0" {
				t.Fatalf("second call has X-Retries %q, want 0: the original redelivered, as its retry was never stored", got)
			}
		})
	}
}
