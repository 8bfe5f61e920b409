package service_test

// Callbacks that cannot reach the inside, and the connector's own check
// of what it consumes.

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/config"
	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/metricstest"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/queue/consume"
	"github.com/openfaas/mailbox/internal/service"
)

// liveListener is an HTTP server on 127.0.0.1 that counts its requests:
// what a callback must not reach.
func liveListener(t *testing.T) (url string, calls *atomic.Int64) {
	t.Helper()
	calls = &atomic.Int64{}
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { calls.Add(1) }))
	t.Cleanup(srv.Close)
	return srv.URL, calls
}

// putOnQueue stores e on the mailbox's queue directly, as anyone with
// access to NATS could, bypassing the API and its checks.
func (b *bundle) putOnQueue(t *testing.T, e *envelope.Envelope) {
	t.Helper()
	q := sideQueue(t, b.cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := q.Schedule(ctx, e); err != nil {
		t.Fatal(err)
	}
}

// TestRequeueRefusesCallbacksInside: through the real API, a callback to
// a live port on loopback or to the metadata address is a 400, and the
// listener is never called.
func TestRequeueRefusesCallbacksInside(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		live, calls := liveListener(t)
		ok := b.deploy("ok", nil, nil)
		for _, u := range []string{live + "/", "http://169.254.169.254/latest/meta-data/"} {
			code, a, _ := b.requeue(t, "ok", []byte("x"), "X-Delay-Duration", "0", "X-Callback-Url", u)
			if code != http.StatusBadRequest || !strings.Contains(a.Error, envelope.HeaderCallbackURL) {
				t.Errorf("requeue with X-Callback-Url %s answered %d %+v, want 400 naming the header", u, code, a)
			}
		}
		b.startConnector(t)
		b.mustSchedule(t, "ok", []byte("y"), "X-Delay-Duration", "0")
		poll.Until(t, 15*time.Second, "the plain message delivered", func() bool { return ok.Len() == 1 })
		if n := calls.Load(); n != 0 {
			t.Errorf("the loopback listener got %d requests, want 0", n)
		}
	})
}

// TestConnectorRefusesWhatTheAPIWould: envelopes put on NATS directly,
// for a function outside allow_functions, for the mailbox itself, with a
// callback to a live loopback port, and a callback of that kind, are
// never called: each is a dead letter with reason refused.
func TestConnectorRefusesWhatTheAPIWould(t *testing.T) {
	live, calls := liveListener(t)
	forEachBackendWith(t, map[string]string{"allow_functions": "ok"}, func(t *testing.T, b *bundle) {
		ok, other, self := b.deploy("ok", nil, nil), b.deploy("other", nil, nil), b.deploy("mailbox", nil, nil)
		now := time.Now().UTC()
		msg := func(id, fn string) *envelope.Envelope {
			return &envelope.Envelope{ID: id, Function: fn, Body: []byte(id), AcceptedAt: now, DueAt: now}
		}
		notAllowed, toSelf := msg("not-allowed", "other"), msg("to-self", "mailbox")
		inside := msg("callback-inside", "ok")
		inside.CallbackURL = live + "/?token=s3cret"
		cb := msg("callback-kind-cb", "ok")
		cb.Kind, cb.CallbackURL = envelope.KindCallback, live+"/"
		for _, e := range []*envelope.Envelope{notAllowed, toSelf, inside, cb} {
			b.putOnQueue(t, e)
		}
		b.startConnector(t)
		for _, e := range []*envelope.Envelope{notAllowed, toSelf, inside, cb} {
			d := b.deadLetter(t, e.ID)
			if d.Reason != envelope.ReasonRefused {
				t.Errorf("dead letter %s has reason %q, want %q", e.ID, d.Reason, envelope.ReasonRefused)
			}
			if d.LastAttemptAt != (time.Time{}) || d.Retries != 0 {
				t.Errorf("dead letter %s records an attempt: %+v", e.ID, d)
			}
		}
		if n := metricstest.Sum(t, b.reg, "mailbox_dead_letters_total", "reason", envelope.ReasonRefused); n != 4 {
			t.Errorf("mailbox_dead_letters_total{reason=refused} = %v, want 4", n)
		}
		if ok.Len()+other.Len()+self.Len() != 0 || calls.Load() != 0 {
			t.Errorf("calls made: ok %d, other %d, mailbox %d, loopback listener %d; want none",
				ok.Len(), other.Len(), self.Len(), calls.Load())
		}
	})
}

// TestSlowCallbackDoesNotDelayDeliveries: callbacks have slots of their
// own. With one delivery slot and a callback endpoint that does not
// answer, other messages are still delivered at once.
func TestSlowCallbackDoesNotDelayDeliveries(t *testing.T) {
	release := make(chan struct{})
	var blocked atomic.Int64
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		blocked.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(slow.Close)
	t.Cleanup(func() { close(release) }) // before the servers and connectors stop
	_, port, _ := net.SplitHostPort(slow.Listener.Addr().String())
	env := map[string]string{
		"max_inflight": "1", "callback_max_inflight": "1", "upstream_timeout": "20s",
		"callback_allow_hosts": "127.0.0.1:" + port,
	}
	forEachBackendWith(t, env, func(t *testing.T, b *bundle) {
		withCallback, plain := b.deploy("with-callback", nil, nil), b.deploy("plain", nil, nil)
		for range 3 {
			b.mustSchedule(t, "with-callback", []byte("x"), "X-Delay-Duration", "0", "X-Callback-Url", slow.URL+"/"+t.Name())
		}
		b.startConnector(t)
		poll.Until(t, 15*time.Second, "a callback held by the slow endpoint", func() bool {
			return withCallback.Len() == 3 && blocked.Load() > 0
		})
		for range 5 {
			b.mustSchedule(t, "plain", []byte("y"), "X-Delay-Duration", "0")
		}
		// Well within upstream_timeout, for which a callback holding the
		// only delivery slot would hold it.
		poll.Until(t, 8*time.Second, "deliveries while a callback hangs", func() bool { return plain.Len() == 5 })
	})
}

// TestCallbackQueryRedactedWhereShown: a callback URL's query may hold a
// secret. The dead letter's detail shows it redacted; the callback itself
// still gets the URL whole.
func TestCallbackQueryRedactedWhereShown(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		var query atomic.Value
		b.gw.Deploy("done", http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { query.Store(r.URL.RawQuery) }), nil)
		u := b.gw.URL() + "/function/done?token=s3cret"
		code, a, _ := b.requeue(t, "fn", []byte("x"), "X-Mailbox-Message-Id", "redact-1", "X-Retries", "3", "X-Max-Retries", "2",
			"X-Callback-Url", u)
		if code != http.StatusOK || a.Status != "dead-lettered" {
			t.Fatalf("requeue answered %d %+v, want 200 dead-lettered", code, a)
		}
		b.startConnector(t)
		poll.Until(t, 15*time.Second, "the callback called", func() bool { return query.Load() != nil })
		if q := query.Load(); q != "token=s3cret" {
			t.Errorf("the callback got query %q, want the URL whole", q)
		}
		var detail map[string]any
		if code := b.call(t, http.MethodGet, "/deadletters/redact-1", &detail); code != http.StatusOK {
			t.Fatalf("GET /deadletters/redact-1 answered %d %+v", code, detail)
		}
		policy, _ := detail["policy"].(map[string]any)
		if got, want := policy["callback_url"], b.gw.URL()+"/function/done?REDACTED"; got != want {
			t.Errorf("callback_url shown as %v, want %s", got, want)
		}
	})
}

// TestConnectorSurvivesForgedNegativeHolds: an envelope put on NATS by
// hand with "holds": -1, of kind callback, while every callback slot is
// taken, once panicked the connector (a shift by a negative count). It is
// now a malformed dead letter, and the connector goes on delivering.
func TestConnectorSurvivesForgedNegativeHolds(t *testing.T) {
	release := make(chan struct{})
	var blocked atomic.Int64
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		blocked.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(slow.Close)
	t.Cleanup(func() { close(release) }) // before the servers and connectors stop
	_, port, _ := net.SplitHostPort(slow.Listener.Addr().String())
	env := map[string]string{
		"callback_max_inflight": "1", "upstream_timeout": "20s",
		"callback_allow_hosts": "127.0.0.1:" + port,
	}
	forEachBackendWith(t, env, func(t *testing.T, b *bundle) {
		plain := b.deploy("plain", nil, nil)
		now := time.Now().UTC()
		hold := &envelope.Envelope{ID: "holds-the-slot-cb", Kind: envelope.KindCallback, Function: "plain",
			Policy: envelope.Policy{CallbackURL: slow.URL + "/"}, AcceptedAt: now, DueAt: now}
		b.putOnQueue(t, hold)
		b.startConnector(t)
		poll.Until(t, 15*time.Second, "the only callback slot taken", func() bool { return blocked.Load() > 0 })

		forged := &envelope.Envelope{ID: "forged-cb", Kind: envelope.KindCallback, Function: "plain",
			Policy: envelope.Policy{CallbackURL: slow.URL + "/"}, Holds: -1, AcceptedAt: now, DueAt: now}
		b.putOnQueue(t, forged)
		data, err := envelope.Encode(forged)
		if err != nil {
			t.Fatal(err)
		}
		d := b.deadLetter(t, consume.MalformedID(data))
		if d.Reason != envelope.ReasonMalformed || !strings.Contains(d.LastError, "holds") {
			t.Errorf("forged envelope's dead letter: reason %q, error %q; want malformed, naming holds", d.Reason, d.LastError)
		}
		// Still running: a message after it is delivered.
		b.mustSchedule(t, "plain", []byte("after"), "X-Delay-Duration", "0")
		poll.Until(t, 10*time.Second, "a delivery after the forged envelope", func() bool { return plain.Len() == 1 })
	})
}

// TestCallbackToGatewayChecksTargets: a callback to the gateway is a call
// to a function, so the function must be one the mailbox may target
// (allow_functions, allow_namespaces, never mailbox_function): a requeue
// naming another is a 400 naming X-Callback-Url, and a message put on NATS
// with one is a dead letter with reason refused, no call made.
func TestCallbackToGatewayChecksTargets(t *testing.T) {
	forEachBackendWith(t, map[string]string{"allow_functions": "ok,receiver"}, func(t *testing.T, b *bundle) {
		ok, receiver, other, self := b.deploy("ok", nil, nil), b.deploy("receiver", nil, nil), b.deploy("other", nil, nil), b.deploy("mailbox", nil, nil)
		gw := b.gw.URL()
		for _, u := range []string{gw + "/function/mailbox/deadletter/ok", gw + "/function/other", gw + "/async-function/other.openfaas-fn",
			gw + "/function/Other", gw + "/function/%6d%61ilbox/deadletter/ok"} {
			code, a, _ := b.requeue(t, "ok", []byte("x"), "X-Delay-Duration", "0", "X-Callback-Url", u)
			if code != http.StatusBadRequest || !strings.Contains(a.Error, envelope.HeaderCallbackURL) {
				t.Errorf("requeue with X-Callback-Url %s answered %d %+v, want 400 naming the header", u, code, a)
			}
		}
		now := time.Now().UTC()
		forged := &envelope.Envelope{ID: "callback-to-other", Function: "ok", Body: []byte("z"), AcceptedAt: now, DueAt: now,
			Policy: envelope.Policy{CallbackURL: gw + "/function/other"}}
		b.putOnQueue(t, forged)
		b.startConnector(t)
		b.mustSchedule(t, "ok", []byte("y"), "X-Delay-Duration", "0", "X-Callback-Url", gw+"/function/receiver")
		poll.Until(t, 15*time.Second, "the allowed callback", func() bool { return receiver.Len() == 1 })
		if d := b.deadLetter(t, forged.ID); d.Reason != envelope.ReasonRefused {
			t.Errorf("the message with a callback to other: reason %q, want %q", d.Reason, envelope.ReasonRefused)
		}
		if ok.Len() != 1 || other.Len()+self.Len() != 0 {
			t.Errorf("calls: ok %d, other %d, mailbox %d; want ok 1, no other", ok.Len(), other.Len(), self.Len())
		}
	})
}

// sideQueue is a queue of the test's own on cfg's NATS, as anything with
// access to NATS could open, connected, and closed when the test ends.
func sideQueue(t *testing.T, cfg config.Config) queue.Queue {
	t.Helper()
	q, err := service.OpenQueue(cfg, prometheus.NewRegistry(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	poll.Until(t, 10*time.Second, "queue connected", q.Connected)
	return q
}
