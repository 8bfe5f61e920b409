package service_test

// End-to-end tests of the assembled mailbox: the requeue API and the
// connector on an embedded server of each backend, delivering to a
// stand-in for the OpenFaaS gateway.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/logtest"
	"github.com/openfaas/mailbox/internal/metricstest"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/catalog"
	"github.com/openfaas/mailbox/internal/config"
	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/gatewaytest"
	"github.com/openfaas/mailbox/internal/jsserver/jsservertest"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/service"
	"github.com/openfaas/mailbox/internal/stanserver/stanservertest"
)

// The stand-in gateway's basic-auth credentials, which the connector is
// given.
const gatewayUser, gatewayPassword = "admin", "secret"

// deploy deploys name on the gateway with annotations and records its
// calls: call n (counting from 1) is answered with status(n), 200 when
// status is nil, and the body "answer n of <name>".
func (b *bundle) deploy(name string, status func(n int) int, annotations map[string]string) *gatewaytest.Recorder {
	rec := gatewaytest.Record(func(w http.ResponseWriter, _ *http.Request, n int) {
		code := http.StatusOK
		if status != nil {
			code = status(n)
		}
		w.WriteHeader(code)
		fmt.Fprintf(w, "answer %d of %s", n, name)
	})
	b.gw.Deploy(name, rec, annotations)
	return rec
}

// always answers every call with code.
func always(code int) func(int) int { return func(int) int { return code } }

// callsWith returns the calls that carried message id.
func callsWith(rec *gatewaytest.Recorder, id string) []gatewaytest.Call {
	var out []gatewaytest.Call
	for _, c := range rec.Calls() {
		if c.ID() == id {
			out = append(out, c)
		}
	}
	return out
}

// bundle is one mailbox under test.
type bundle struct {
	nats broker
	gw   *gatewaytest.Gateway
	cfg  config.Config
	api  *httptest.Server
	reg  *prometheus.Registry // the connector's
	// apiReg is the API's, and its dead-letter store's.
	apiReg *prometheus.Registry
	// connectorLog receives the connector's logs; nil discards them.
	connectorLog *slog.Logger
}

// broker is an embedded NATS server for one backend.
type broker interface {
	URL() string
	Restart(t testing.TB)
	Stop()
	DeadLetters(t testing.TB) []*envelope.Envelope
}

type stanBroker struct{ *stanservertest.Server }

func (s stanBroker) DeadLetters(t testing.TB) []*envelope.Envelope {
	return stanservertest.DeadLetters(t, s.URL(), "mailbox")
}

type jetStreamBroker struct{ *jsservertest.Server }

func (s jetStreamBroker) DeadLetters(t testing.TB) []*envelope.Envelope {
	return jsservertest.DeadLetters(t, s.URL(), "mailbox-deadletter")
}

var backends = []string{"stan", "jetstream"}

// forEachBackend runs test against a fresh mailbox on each backend.
func forEachBackend(t *testing.T, test func(t *testing.T, b *bundle)) {
	forEachBackendWith(t, nil, test)
}

// forEachBackendWith is forEachBackend with settings over the tests'
// defaults, for both the API and the connector.
func forEachBackendWith(t *testing.T, env map[string]string, test func(t *testing.T, b *bundle)) {
	t.Parallel()
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			test(t, setup(t, backend, env))
		})
	}
}

// setup starts a gateway with no function deployed, an embedded server of
// backend and the requeue API; startConnector starts the connector.
func setup(t testing.TB, backend string, extra map[string]string) *bundle {
	t.Helper()
	return setupIn(t, backend, extra, t.TempDir())
}

// setupIn is setup with the server storing in dir.
func setupIn(t testing.TB, backend string, extra map[string]string, dir string) *bundle {
	t.Helper()
	return setupWith(t, backend, extra, dir, nil)
}

// setupWith is setupIn with the API (and the connector) reaching the
// server at via(its URL), when via is not nil: through a proxy.
func setupWith(t testing.TB, backend string, extra map[string]string, dir string, via func(string) string) *bundle {
	t.Helper()
	gw, err := gatewaytest.Start(gatewaytest.Options{User: gatewayUser, Password: gatewayPassword})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Stop)
	b := &bundle{gw: gw}
	if backend == "jetstream" {
		b.nats = jetStreamBroker{jsservertest.StartIn(t, dir)}
	} else {
		b.nats = stanBroker{stanservertest.StartIn(t, dir)}
	}
	secrets := t.TempDir()
	for name, v := range map[string]string{"basic-auth-user": gatewayUser, "basic-auth-password": gatewayPassword, "mailbox-token": apiToken} {
		if err := os.WriteFile(filepath.Join(secrets, name), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	env := map[string]string{
		"backend":           backend,
		"nats_url":          b.nats.URL(),
		"gateway_url":       b.gw.URL(),
		"basic_auth":        "true",
		"secret_mount_path": secrets,
		"upstream_timeout":  "5s",
		"auth_token_secret": "mailbox-token",
		// The store's file system is watched only where a test asks.
		"data_dir_reserve_bytes": "0",
	}
	if via != nil {
		env["nats_url"] = via(b.nats.URL())
	}
	maps.Copy(env, extra)
	cfg, err := config.Load(func(k string) (string, bool) { v, ok := env[k]; return v, ok }, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.StoreDir = dir // as mailbox serve sets it for its embedded server
	b.cfg = cfg

	b.apiReg = prometheus.NewRegistry()
	q, err := service.OpenQueue(cfg, b.apiReg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	store, err := service.DeadLetters(cfg, q, b.apiReg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- store.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-stopped })
	h, err := service.API(cfg, q, b.apiReg, store, quiet)
	if err != nil {
		t.Fatal(err)
	}
	b.api = httptest.NewServer(h)
	t.Cleanup(b.api.Close)
	poll.Until(t, 10*time.Second, "API healthy", func() bool { return b.health() == http.StatusOK })
	return b
}

var quiet = slog.New(slog.DiscardHandler)

// startConnector runs a connector until stop or the end of the test.
//
// Tests that count calls store their first messages before they start
// the connector. NATS Streaming sends a message published while a durable
// subscription is starting twice, live and then as a redelivery (its
// server's processSubscriptionsStart redelivers what is pending): at
// least once, as the mailbox promises, but not the exact count a test
// checks.
func (b *bundle) startConnector(t testing.TB) (stop func()) {
	t.Helper()
	b.reg = prometheus.NewRegistry()
	logger := quiet
	if b.connectorLog != nil {
		logger = b.connectorLog
	}
	q, err := service.OpenQueue(b.cfg, b.reg, logger)
	if err != nil {
		t.Fatal(err)
	}
	d, err := service.Dispatcher(b.cfg, q, b.reg, logger)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("connector: %v", err)
			}
			_ = q.Close()
		})
	}
	t.Cleanup(stop)
	return stop
}

func (b *bundle) health() int {
	res, err := http.Get(b.api.URL + "/healthz")
	if err != nil {
		return 0
	}
	res.Body.Close()
	return res.StatusCode
}

type answer struct {
	Status     string `json:"status"`
	ID         string `json:"id"`
	Function   string `json:"function"`
	Retries    int    `json:"retries"`
	MaxRetries int    `json:"max_retries"`
	DueAt      string `json:"due_at"`
	Reason     string `json:"reason"`
	Error      string `json:"error"`
}

// requeue POSTs body to /deadletter/<fn> with headers given as pairs.
func (b *bundle) requeue(t *testing.T, fn string, body []byte, headers ...string) (int, answer, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, b.api.URL+"/deadletter/"+fn, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+apiToken)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var a answer
	if err := json.NewDecoder(res.Body).Decode(&a); err != nil {
		t.Fatalf("answer is not JSON: %v", err)
	}
	return res.StatusCode, a, res.Header
}

func (b *bundle) mustSchedule(t *testing.T, fn string, body []byte, headers ...string) answer {
	t.Helper()
	code, a, _ := b.requeue(t, fn, body, headers...)
	if code != http.StatusAccepted || a.Status != "scheduled" {
		t.Fatalf("requeue answered %d %+v, want 202 scheduled", code, a)
	}
	return a
}

func TestDelayBodyAndHeadersArrive(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		echo := b.deploy("echo", nil, nil)
		body := []byte{0, 1, 2, 0xff, 'h', 'i'}
		code, a, h := b.requeue(t, "echo", body,
			"X-Delay-Duration", "1500ms", "X-Max-Retries", "4", "X-Retries", "1",
			"Content-Type", "application/octet-stream", "X-Custom", "kept",
			"Authorization", "Bearer secret", "Cookie", "session=1")
		if code != http.StatusAccepted || h.Get(envelope.HeaderMessageID) != a.ID || a.ID == "" {
			t.Fatalf("answer %d %+v", code, a)
		}
		b.startConnector(t)
		due, err := time.Parse(time.RFC3339Nano, a.DueAt)
		if err != nil {
			t.Fatal(err)
		}
		poll.Until(t, 15*time.Second, "function called", func() bool { return echo.Len() == 1 })
		c := echo.Calls()[0]
		if c.At.Before(due) {
			t.Errorf("delivered %v before it was due", due.Sub(c.At))
		}
		if !bytes.Equal(c.Body, body) {
			t.Errorf("body %q, want %q", c.Body, body)
		}
		want := map[string]string{
			"Content-Type":            "application/octet-stream",
			"X-Custom":                "kept",
			"Authorization":           "",
			"Cookie":                  "",
			envelope.HeaderRetries:    "1",
			envelope.HeaderMaxRetries: "4",
			envelope.HeaderDelay:      "1.5s",
			envelope.HeaderMessageID:  a.ID,
			"User-Agent":              service.UserAgent,
		}
		for k, v := range want {
			if got := c.Header.Get(k); got != v {
				t.Errorf("header %s = %q, want %q", k, got, v)
			}
		}
	})
}

func TestFailingFunctionIsDeadLetteredAfterMaxRetries(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		broken := b.deploy("broken", always(http.StatusInternalServerError), nil)
		a := b.mustSchedule(t, "broken", []byte("payload"), "X-Max-Retries", "2", "X-Delay-Duration", "200ms")
		b.startConnector(t)

		var dead []*envelope.Envelope
		poll.Until(t, 20*time.Second, "dead letter stored", func() bool {
			dead = b.nats.DeadLetters(t)
			return len(dead) == 1
		})
		calls := broken.Calls()
		if len(calls) != 3 {
			t.Fatalf("function called %d times, want 3 (X-Retries 0, 1, 2)", len(calls))
		}
		for i, c := range calls {
			if got := c.Header.Get(envelope.HeaderRetries); got != strconv.Itoa(i) {
				t.Errorf("call %d had X-Retries %q", i, got)
			}
		}
		d := dead[0]
		if d.ID != a.ID || d.Reason != envelope.ReasonMaxRetries || d.Function != "broken" || d.LastStatus != 500 ||
			d.LastResponse != "answer 3 of broken" || string(d.Body) != "payload" || d.Retries != 2 ||
			d.FirstAttemptAt.IsZero() || !d.LastAttemptAt.After(d.FirstAttemptAt) {
			t.Fatalf("dead letter %+v", d)
		}
		// Counted just after the dead letter is stored.
		poll.Until(t, 5*time.Second, "mailbox_dead_letters_total = 1", func() bool {
			return metricstest.Sum(t, b.reg, "mailbox_dead_letters_total") == 1
		})
	})
}

func TestFunctionSucceedingOnThirdCallIsCalledThreeTimes(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		flaky := b.deploy("flaky", func(n int) int {
			if n < 3 {
				return http.StatusTooManyRequests
			}
			return http.StatusOK
		}, nil)
		b.mustSchedule(t, "flaky", []byte("x"), "X-Max-Retries", "5", "X-Delay-Duration", "100ms")
		b.startConnector(t)
		poll.Until(t, 15*time.Second, "third call", func() bool { return flaky.Len() >= 3 })
		// A fourth call would follow within the 100 ms delay if the third
		// success were not acknowledged; the delivered counter settles first.
		poll.Until(t, 5*time.Second, "delivery counted", func() bool {
			return metricstest.Sum(t, b.reg, "mailbox_delivered_total") == 1
		})
		if n := flaky.Len(); n != 3 {
			t.Fatalf("function called %d times, want 3", n)
		}
		if dead := b.nats.DeadLetters(t); len(dead) != 0 {
			t.Fatalf("%d dead letters, want none", len(dead))
		}
	})
}

func TestRequeueAboveMaxRetriesIsDeadLetter(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		done := b.deploy("done", nil, nil)
		b.startConnector(t)
		code, a, _ := b.requeue(t, "done", []byte("late"), "X-Retries", "4", "X-Max-Retries", "3")
		if code != http.StatusOK || a.Status != "dead-lettered" || a.Reason != envelope.ReasonMaxRetries {
			t.Fatalf("answer %d %+v, want 200 dead-lettered", code, a)
		}
		var dead []*envelope.Envelope
		poll.Until(t, 10*time.Second, "dead letter stored", func() bool {
			dead = b.nats.DeadLetters(t)
			return len(dead) == 1
		})
		if dead[0].ID != a.ID || string(dead[0].Body) != "late" {
			t.Fatalf("dead letter %+v", dead[0])
		}
		if n := done.Len(); n != 0 {
			t.Fatalf("function called %d times, want 0", n)
		}
	})
}

func TestConnectorAndNATSRestartsLoseNothing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		steady := b.deploy("steady", nil, nil)
		stop := b.startConnector(t)
		const n = 30
		for i := range n {
			b.mustSchedule(t, "steady", []byte(strconv.Itoa(i)), "X-Delay-Duration", strconv.Itoa(1+i%3))
		}
		// Stop the connector before anything is due, then restart NATS while
		// every message waits, then start a new connector.
		stop()
		b.nats.Restart(t)
		poll.Until(t, 15*time.Second, "API reconnects", func() bool { return b.health() == http.StatusOK })
		b.startConnector(t)
		poll.Until(t, 30*time.Second, "every message delivered", func() bool { return steady.Distinct() == n })
	})
}

func TestNATSRestartDuringDeliveryLosesNothing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		steady := b.deploy("steady", nil, nil)
		b.startConnector(t)
		const n = 30
		for i := range n {
			b.mustSchedule(t, "steady", []byte(strconv.Itoa(i)), "X-Delay-Duration", strconv.Itoa(i%4))
		}
		poll.Until(t, 15*time.Second, "some delivered", func() bool { return steady.Distinct() > 0 })
		b.nats.Restart(t)
		poll.Until(t, 30*time.Second, "every message delivered", func() bool { return steady.Distinct() == n })
	})
}

func TestShortDelayNotBehindLongOnes(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		slow, fast := b.deploy("slow", nil, nil), b.deploy("fast", nil, nil)
		b.startConnector(t)
		for i := range 200 {
			b.mustSchedule(t, "slow", []byte(strconv.Itoa(i)), "X-Delay-Duration", "3600")
		}
		for i := range 5 {
			b.mustSchedule(t, "fast", []byte(strconv.Itoa(i)), "X-Delay-Duration", "1")
		}
		poll.Until(t, 15*time.Second, "1 s messages delivered", func() bool { return fast.Distinct() == 5 })
		if n := slow.Len(); n != 0 {
			t.Fatalf("%d one-hour messages delivered early", n)
		}
	})
}

func TestGatewayOutagePausesDeliveries(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		patient := b.deploy("patient", nil, nil)
		b.startConnector(t)
		// After the connector's check at start, a read of the gateway's
		// function list (two requests), so that the outage is found by
		// failing calls.
		poll.Until(t, 10*time.Second, "the connector read the function list", func() bool {
			return b.gw.Lookups() > 0 && !b.lastListRead(t).IsZero()
		})
		b.gw.Stop()
		const n = 10
		for i := range n {
			b.mustSchedule(t, "patient", []byte(strconv.Itoa(i)), "X-Delay-Duration", "0", "X-Max-Retries", "1")
		}
		// The first calls fail and are scheduled again; then the connector
		// pauses and probes the gateway with the function lookup until it
		// answers, instead of spending every retry.
		poll.Until(t, 10*time.Second, "failed calls scheduled again and deliveries paused", func() bool {
			return metricstest.Sum(t, b.reg, "mailbox_retries_scheduled_total") > 0 && metricstest.Sum(t, b.reg, "mailbox_gateway_up") == 0
		})
		if err := b.gw.Restart(); err != nil {
			t.Fatal(err)
		}
		poll.Until(t, 30*time.Second, "every message delivered after the outage", func() bool { return patient.Distinct() == n })
		if dead := b.nats.DeadLetters(t); len(dead) != 0 {
			t.Fatalf("%d dead letters after a gateway outage, want none", len(dead))
		}
		for _, c := range patient.Calls() {
			if r := c.Header.Get(envelope.HeaderRetries); r != "0" && r != "1" {
				t.Errorf("delivered with X-Retries %s, want 0 or 1: calls waiting at the paused gate do not count", r)
			}
		}
		if metricstest.Sum(t, b.reg, "mailbox_gateway_up") != 1 {
			t.Errorf("mailbox_gateway_up is not 1 after the gateway is back")
		}
		if b.gw.Lookups() == 0 || b.gw.Denied() != 0 {
			t.Fatalf("lookups %d, denied %d: want authenticated lookups", b.gw.Lookups(), b.gw.Denied())
		}
	})
}

func TestConnectorStartedWhileGatewayDownSpendsNoRetry(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		early := b.deploy("early", nil, nil)
		b.gw.Stop()
		const n = 5
		for i := range n {
			b.mustSchedule(t, "early", []byte(strconv.Itoa(i)), "X-Delay-Duration", "0", "X-Max-Retries", "3")
		}
		b.startConnector(t)
		poll.Until(t, 10*time.Second, "deliveries paused", func() bool { return metricstest.Sum(t, b.reg, "mailbox_gateway_up") == 0 })
		if got := b.gw.Lookups(); got != 0 {
			t.Fatalf("the stopped gateway answered %d lookups", got)
		}
		if err := b.gw.Restart(); err != nil {
			t.Fatal(err)
		}
		poll.Until(t, 30*time.Second, "every message delivered", func() bool { return early.Distinct() == n })
		// The gate opened on the gateway's answer to the connector's
		// authenticated function lookup.
		if b.gw.Lookups() == 0 || b.gw.Denied() != 0 {
			t.Errorf("lookups %d, denied %d: want authenticated lookups once the gateway is back", b.gw.Lookups(), b.gw.Denied())
		}
		for _, c := range early.Calls() {
			if r := c.Header.Get(envelope.HeaderRetries); r != "0" {
				t.Errorf("delivered with X-Retries %s, want 0: the connector checks the gateway before its first call", r)
			}
		}
	})
}

func TestConnectorReportsRefusedCredentialsAtStart(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		secrets := t.TempDir()
		anyway := b.deploy("anyway", nil, nil)
		// The connector reads the mailbox's token there too, to sign.
		for name, v := range map[string]string{"basic-auth-user": gatewayUser, "basic-auth-password": "wrong", "mailbox-token": apiToken} {
			if err := os.WriteFile(filepath.Join(secrets, name), []byte(v), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		b.cfg.SecretMountPath = secrets
		b.startConnector(t)
		poll.Until(t, 10*time.Second, "the gateway refused the connector's lookup", func() bool { return b.gw.Denied() > 0 })
		// Refused credentials do not stop deliveries: CE's /function/
		// routes need none.
		b.mustSchedule(t, "anyway", []byte("x"), "X-Delay-Duration", "0")
		poll.Until(t, 10*time.Second, "delivered", func() bool { return anyway.Distinct() == 1 })
	})
}

func TestRequeueWhileNATSDownIs503(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		b.nats.Stop()
		poll.Until(t, 15*time.Second, "health fails", func() bool { return b.health() == http.StatusServiceUnavailable })
		code, a, h := b.requeue(t, "fn", []byte("x"))
		if code != http.StatusServiceUnavailable || h.Get("Retry-After") == "" || a.Error == "" {
			t.Fatalf("answer %d %+v Retry-After %q, want 503 with Retry-After", code, a, h.Get("Retry-After"))
		}
	})
}

// counter sums every series of the counter family name in reg.

// The delivery policy, end to end: what the gateway lists, the function's
// answers and annotations, and the message's headers decide each
// message's fate.

// deadLetter waits for the dead letter of message id and returns it.
func (b *bundle) deadLetter(t *testing.T, id string) *envelope.Envelope {
	t.Helper()
	var found *envelope.Envelope
	poll.Until(t, 20*time.Second, "dead letter of "+id+" stored", func() bool {
		for _, d := range b.nats.DeadLetters(t) {
			if d.ID == id {
				found = d
				return true
			}
		}
		return false
	})
	return found
}

// lastListRead is when the connector last read the gateway's function
// list, zero before it has.
func (b *bundle) lastListRead(t *testing.T) time.Time {
	s := metricstest.Sum(t, b.reg, "mailbox_catalog_last_refresh_timestamp_seconds")
	if s == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(s*1e9))
}

func acceptedAt(t *testing.T, a answer) time.Time {
	t.Helper()
	due, err := time.Parse(time.RFC3339Nano, a.DueAt)
	if err != nil {
		t.Fatal(err)
	}
	return due
}

func TestMessageForUndeployedFunctionWaitsOutTheGrace(t *testing.T) {
	forEachBackendWith(t, map[string]string{"no_such_function_grace": "2s"}, func(t *testing.T, b *bundle) {
		b.startConnector(t)
		// A lookup less than catalog.DefaultMissRefresh after the last
		// read of the gateway's list is answered from that list. Once the
		// list read at start is older, the first lookup of the next
		// message reads it again, which shows as a new read.
		poll.Until(t, 10*time.Second, "the list read at start is older than the miss refresh", func() bool {
			last := b.lastListRead(t)
			return !last.IsZero() && time.Since(last) > catalog.DefaultMissRefresh
		})

		// Deployed during the grace: delivered.
		a := b.mustSchedule(t, "late", []byte("wait for me"), "X-Delay-Duration", "0")
		accepted := acceptedAt(t, a)
		poll.Until(t, 10*time.Second, "the connector looked for the function", func() bool {
			return b.lastListRead(t).After(accepted)
		})
		late := b.deploy("late", nil, nil)

		// Never deployed: a dead letter once the grace is over.
		g := b.mustSchedule(t, "ghost", []byte("lost"), "X-Delay-Duration", "0")

		poll.Until(t, 15*time.Second, "delivered once deployed", func() bool { return late.Len() > 0 })
		c := late.Calls()[0]
		// A message held back waits at least a second before the next
		// lookup; held back, it was not attempted.
		if waited := c.At.Sub(accepted); waited < 900*time.Millisecond || c.Header.Get(envelope.HeaderRetries) != "0" || string(c.Body) != "wait for me" {
			t.Errorf("delivered %v after it was accepted with X-Retries %q, body %q; want it held back at least once, X-Retries 0",
				waited, c.Header.Get(envelope.HeaderRetries), c.Body)
		}

		d := b.deadLetter(t, g.ID)
		if d.Reason != envelope.ReasonNoSuchFunction || d.Function != "ghost" || d.Retries != 0 || d.LastStatus != 0 ||
			string(d.Body) != "lost" || d.MissingSince.IsZero() {
			t.Fatalf("dead letter %+v, want ghost's, reason no-such-function, never attempted", d)
		}
		if held := d.DeadAt.Sub(d.AcceptedAt); held < 2*time.Second || held > 10*time.Second {
			t.Errorf("dead-lettered %v after it was accepted, want just after the 2s grace", held)
		}
		if dead := b.nats.DeadLetters(t); len(dead) != 1 {
			t.Errorf("%d dead letters, want only ghost's", len(dead))
		}
		if n := late.Len(); n != 1 {
			t.Errorf("late called %d times, want once", n)
		}
	})
}

func TestRejectedMessageIsDeadLetteredAfterOneCall(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		picky := b.deploy("picky", always(http.StatusBadRequest), nil)
		a := b.mustSchedule(t, "picky", []byte("bad input"), "X-Max-Retries", "5", "X-Delay-Duration", "0")
		b.startConnector(t)
		d := b.deadLetter(t, a.ID)
		if d.Reason != envelope.ReasonRejected || d.LastStatus != http.StatusBadRequest || d.Retries != 0 ||
			d.LastResponse != "answer 1 of picky" || string(d.Body) != "bad input" {
			t.Fatalf("dead letter %+v, want reason rejected after the first call", d)
		}
		if n := picky.Len(); n != 1 {
			t.Fatalf("function called %d times, want once: a 400 is not retried", n)
		}
	})
}

// Through the API a message waits its delay before the first delivery
// too, so the 60 s delay is the function's (its annotation) while the
// message is due at once (default_delay 0, no X-Delay-Duration): the first
// call gets the 429.
func TestRetryAfterOverridesTheDelay(t *testing.T) {
	forEachBackendWith(t, map[string]string{"default_delay": "0"}, func(t *testing.T, b *bundle) {
		throttled := gatewaytest.Record(func(w http.ResponseWriter, _ *http.Request, n int) {
			if n == 1 {
				w.Header().Set("Retry-After", "1")
				w.WriteHeader(http.StatusTooManyRequests)
			}
		})
		b.gw.Deploy("throttled", throttled, map[string]string{catalog.AnnotationDelay: "60"})
		b.mustSchedule(t, "throttled", []byte("x"))
		b.startConnector(t)
		poll.Until(t, 10*time.Second, "retried within seconds, not a minute", func() bool { return throttled.Len() == 2 })
		calls := throttled.Calls()
		if d := calls[0].Header.Get(envelope.HeaderDelay); d != "60" {
			t.Fatalf("first call with X-Delay-Duration %q, want the annotation's 60", d)
		}
		if gap := calls[1].At.Sub(calls[0].At); gap < 900*time.Millisecond || gap > 5*time.Second {
			t.Errorf("retried %v after the 429, want about the Retry-After of 1s", gap)
		}
		if r := calls[1].Header.Get(envelope.HeaderRetries); r != "1" {
			t.Errorf("retry with X-Retries %q, want 1", r)
		}
		poll.Until(t, 5*time.Second, "delivery counted", func() bool {
			return metricstest.Sum(t, b.reg, "mailbox_delivered_total") == 1
		})
	})
}

func TestExpiredMessageIsDeadLetteredBeforeItsRetriesAreSpent(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		doomed := b.deploy("doomed", always(http.StatusInternalServerError), nil)
		const maxRetries = 10
		a := b.mustSchedule(t, "doomed", []byte("x"), "X-Message-TTL", "2", "X-Delay-Duration", "1",
			"X-Max-Retries", strconv.Itoa(maxRetries))
		b.startConnector(t)
		d := b.deadLetter(t, a.ID)
		if d.Reason != envelope.ReasonExpired || d.LastStatus != http.StatusInternalServerError {
			t.Fatalf("dead letter %+v, want reason expired after a failed call", d)
		}
		if n := doomed.Len(); n < 1 || n > maxRetries {
			t.Fatalf("function called %d times, want at least once and fewer than the %d calls X-Max-Retries allows", n, maxRetries+1)
		}
		if age := d.DeadAt.Sub(d.AcceptedAt); age > 3*time.Second {
			t.Errorf("dead-lettered %v after it was accepted, want by the end of its 2s TTL", age)
		}
	})
}

func TestDeadLetterFunctionGetsTheDeadLetterOnce(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		b.deploy("origin", always(http.StatusInternalServerError), nil)
		dlq := b.deploy("dlq", nil, nil)
		// A dead-letter function that fails, and names itself as its
		// dead-letter function: its own dead letter is only stored.
		broken := b.deploy("dlq-broken", always(http.StatusInternalServerError), map[string]string{
			catalog.AnnotationMaxRetries: "1", catalog.AnnotationDelay: "0",
			catalog.AnnotationDeadLetterFunction: "dlq-broken",
		})
		routed := b.mustSchedule(t, "origin", []byte("first"), "X-Max-Retries", "0", "X-Delay-Duration", "0",
			"X-Dead-Letter-Function", "dlq", "X-Custom", "kept")
		failed := b.mustSchedule(t, "origin", []byte("second"), "X-Max-Retries", "0", "X-Delay-Duration", "0",
			"X-Dead-Letter-Function", "dlq-broken")
		b.startConnector(t)

		poll.Until(t, 15*time.Second, "the dead-letter function called", func() bool { return dlq.Len() == 1 })
		d := b.deadLetter(t, routed.ID)
		if d.Reason != envelope.ReasonMaxRetries || d.Function != "origin" || string(d.Body) != "first" {
			t.Fatalf("dead letter %+v, want origin's, reason max-retries", d)
		}
		c := dlq.Calls()[0]
		if string(c.Body) != "first" {
			t.Errorf("dead-letter function got body %q, want the original", c.Body)
		}
		for k, v := range map[string]string{
			envelope.HeaderDeadLetterReason:  envelope.ReasonMaxRetries,
			envelope.HeaderDeadLetterFrom:    "origin",
			envelope.HeaderDeadLetterRetries: "0",
			"X-Custom":                       "kept",
		} {
			if got := c.Header.Get(k); got != v {
				t.Errorf("dead-letter function got %s = %q, want %q", k, got, v)
			}
		}
		if at, err := time.Parse(time.RFC3339Nano, c.Header.Get(envelope.HeaderDeadLetterTime)); err != nil || at.Sub(d.DeadAt).Abs() > time.Second {
			t.Errorf("%s = %q, want the dead letter's time %v", envelope.HeaderDeadLetterTime, c.Header.Get(envelope.HeaderDeadLetterTime), d.DeadAt)
		}

		// The failing dead-letter function: called 1 + its max-retries
		// times, then its dead letter is stored and goes nowhere.
		var own *envelope.Envelope
		poll.Until(t, 15*time.Second, "the dead-letter function's own dead letter stored", func() bool {
			for _, d := range b.nats.DeadLetters(t) {
				if d.Function == "dlq-broken" {
					own = d
					return true
				}
			}
			return false
		})
		if own.Kind != envelope.KindDeadLetter || own.Reason != envelope.ReasonMaxRetries || string(own.Body) != "second" ||
			own.Header.Get(envelope.HeaderDeadLetterFrom) != "origin" {
			t.Fatalf("dead-letter function's dead letter %+v", own)
		}
		b.deadLetter(t, failed.ID)
		// Routed again, it would be due at once: give it the time a
		// delivery takes here, many times over.
		time.Sleep(time.Second)
		if n := broken.Len(); n != 2 {
			t.Errorf("failing dead-letter function called %d times, want 2 (X-Retries 0, 1)", n)
		}
		if n := dlq.Len(); n != 1 {
			t.Errorf("dead-letter function called %d times, want once", n)
		}
		if dead := b.nats.DeadLetters(t); len(dead) != 3 {
			t.Errorf("%d dead letters, want 3: two of origin, one of dlq-broken", len(dead))
		}
	})
}

func TestCallbackURLGetsTheOutcome(t *testing.T) {
	forEachBackendWith(t, map[string]string{"callback_delay": "100ms"}, func(t *testing.T, b *bundle) {
		delivered, dead := gatewaytest.Record(nil), gatewaytest.Record(nil)
		flaky := gatewaytest.Record(func(w http.ResponseWriter, _ *http.Request, n int) {
			if n < 3 {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
		})
		// The receivers are functions behind the gateway, where callbacks
		// may always go.
		b.gw.Deploy("delivered", delivered, nil)
		b.gw.Deploy("dead", dead, nil)
		b.gw.Deploy("flaky", flaky, nil)
		cb := b.gw.URL() + "/function"

		// ok answers "done <body>", whatever the order of the calls.
		b.gw.Deploy("ok", gatewaytest.Record(func(w http.ResponseWriter, r *http.Request, _ int) {
			body, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "done %s", body)
		}), nil)
		b.deploy("bad", always(http.StatusInternalServerError), nil)
		ok := b.mustSchedule(t, "ok", []byte("x"), "X-Delay-Duration", "0", "X-Callback-Url", cb+"/delivered")
		bad := b.mustSchedule(t, "bad", []byte("y"), "X-Delay-Duration", "0", "X-Max-Retries", "0",
			"X-Callback-Url", cb+"/dead")
		retried := b.mustSchedule(t, "ok", []byte("z"), "X-Delay-Duration", "0", "X-Callback-Url", cb+"/flaky")
		b.startConnector(t)

		poll.Until(t, 15*time.Second, "callbacks received", func() bool {
			return delivered.Len() == 1 && dead.Len() == 1 && flaky.Len() == 3
		})
		check := func(what string, c gatewaytest.Call, id, body string, want map[string]string) {
			t.Helper()
			if c.ID() != id || string(c.Body) != body {
				t.Errorf("%s callback: id %q, body %q; want %q, %q", what, c.ID(), c.Body, id, body)
			}
			for k, v := range want {
				if got := c.Header.Get(k); got != v {
					t.Errorf("%s callback: %s = %q, want %q", what, k, got, v)
				}
			}
		}
		check("delivered", delivered.Calls()[0], ok.ID, "done x", map[string]string{
			envelope.HeaderOutcome: envelope.OutcomeDelivered, envelope.HeaderFunctionStatus: "200",
			envelope.HeaderFunctionName: "ok", envelope.HeaderAttempts: "1",
		})
		check("dead letter", dead.Calls()[0], bad.ID, "answer 1 of bad", map[string]string{
			envelope.HeaderOutcome: envelope.OutcomeDeadLettered, envelope.HeaderFunctionStatus: "500",
			envelope.HeaderDeadLetterReason: envelope.ReasonMaxRetries, envelope.HeaderFunctionName: "bad",
		})
		for _, c := range flaky.Calls() {
			check("retried", c, retried.ID, "done z", map[string]string{envelope.HeaderOutcome: envelope.OutcomeDelivered})
		}
		if dead := b.nats.DeadLetters(t); len(dead) != 1 || dead[0].ID != bad.ID {
			t.Errorf("dead letters %+v, want only bad's: the callbacks succeeded", dead)
		}
	})
}

// As in TestRetryAfterOverridesTheDelay, default_delay 0 makes a message
// without X-Delay-Duration due at once.
func TestAnnotationsApplyUnlessHeadersSetThem(t *testing.T) {
	forEachBackendWith(t, map[string]string{"default_delay": "0"}, func(t *testing.T, b *bundle) {
		annotated := b.deploy("annotated", always(http.StatusInternalServerError), map[string]string{
			catalog.AnnotationMaxRetries: "1", catalog.AnnotationDelay: "1",
		})
		plain := b.mustSchedule(t, "annotated", []byte("plain"))
		own := b.mustSchedule(t, "annotated", []byte("own"), "X-Max-Retries", "2", "X-Delay-Duration", "100ms")
		b.startConnector(t)

		for _, tc := range []struct {
			a          answer
			maxRetries string
			delay      string
			minGap     time.Duration
		}{
			{plain, "1", "1", 900 * time.Millisecond},
			{own, "2", "100ms", 90 * time.Millisecond},
		} {
			d := b.deadLetter(t, tc.a.ID)
			calls := callsWith(annotated, tc.a.ID)
			want, _ := strconv.Atoi(tc.maxRetries)
			if d.Reason != envelope.ReasonMaxRetries || d.Retries != want || len(calls) != want+1 {
				t.Errorf("message %s: dead letter %+v after %d calls, want reason max-retries after %d", tc.a.ID, d, len(calls), want+1)
				continue
			}
			for i, c := range calls {
				if c.Header.Get(envelope.HeaderMaxRetries) != tc.maxRetries || c.Header.Get(envelope.HeaderDelay) != tc.delay ||
					c.Header.Get(envelope.HeaderRetries) != strconv.Itoa(i) {
					t.Errorf("message %s, call %d: X-Max-Retries %q, X-Delay-Duration %q, X-Retries %q; want %s, %s, %d", tc.a.ID, i,
						c.Header.Get(envelope.HeaderMaxRetries), c.Header.Get(envelope.HeaderDelay), c.Header.Get(envelope.HeaderRetries),
						tc.maxRetries, tc.delay, i)
				}
				if i > 0 {
					if gap := c.At.Sub(calls[i-1].At); gap < tc.minGap {
						t.Errorf("message %s, call %d: %v after the one before, want at least %v", tc.a.ID, i, gap, tc.minGap)
					}
				}
			}
		}
	})
}

func TestMaxConcurrencyHoldsCallsToOneAtATime(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		var inflight, most atomic.Int32
		narrow := gatewaytest.Record(func(http.ResponseWriter, *http.Request, int) {
			n := inflight.Add(1)
			defer inflight.Add(-1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			time.Sleep(200 * time.Millisecond) // the function's work
		})
		b.gw.Deploy("narrow", narrow, map[string]string{catalog.AnnotationMaxConcurrency: "1"})
		const n = 4
		for i := range n {
			b.mustSchedule(t, "narrow", []byte(strconv.Itoa(i)), "X-Delay-Duration", "0")
		}
		b.startConnector(t)
		poll.Until(t, 30*time.Second, "every message delivered", func() bool { return narrow.Distinct() == n })
		if m := most.Load(); m != 1 {
			t.Errorf("%d calls in flight at once, want at most 1", m)
		}
		for _, c := range narrow.Calls() {
			if r := c.Header.Get(envelope.HeaderRetries); r != "0" {
				t.Errorf("delivered with X-Retries %s, want 0: waiting for the limit is not an attempt", r)
			}
		}
	})
}

// A connector takes its first rate slot only once the limiter's horizon
// (10 s) and its settle periods have passed since it started (see
// internal/limit), so this test waits that long before the first call.
func TestRateLimitSpreadsCalls(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		limited := b.deploy("limited", nil, map[string]string{catalog.AnnotationRate: "5/s"})
		const n = 20
		start := time.Now()
		for i := range n {
			b.mustSchedule(t, "limited", []byte(strconv.Itoa(i)), "X-Delay-Duration", "0")
		}
		b.startConnector(t)
		poll.Until(t, 2*time.Minute, "every message delivered", func() bool { return limited.Distinct() == n })
		calls := limited.Calls()
		at := make([]time.Time, len(calls))
		for i, c := range calls {
			at[i] = c.At
			if r := c.Header.Get(envelope.HeaderRetries); r != "0" {
				t.Errorf("delivered with X-Retries %s, want 0: waiting for the limit is not an attempt", r)
			}
		}
		slices.SortFunc(at, time.Time.Compare)
		// Six calls span at least a second, less what the calls' trip
		// from their slot to the function may add to one and not to
		// another.
		const slack = 100 * time.Millisecond
		for i := 0; i+5 < len(at); i++ {
			if span := at[i+5].Sub(at[i]); span < time.Second-slack {
				t.Errorf("calls %d to %d within %v: more than 5 in a second", i, i+5, span)
			}
		}
		t.Logf("%d calls, the first %v after the messages were due, the last %v after the first", len(at), at[0].Sub(start), at[len(at)-1].Sub(at[0]))
	})
}

// statusAnswer is the answer of GET /messages/<id>.
type statusAnswer struct {
	ID         string `json:"id"`
	Function   string `json:"function"`
	Status     string `json:"status"`
	DueAt      string `json:"due_at"`
	Retries    int    `json:"retries"`
	Reason     string `json:"reason"`
	LastStatus int    `json:"last_status"`
	UpdatedAt  string `json:"updated_at"`
	Error      string `json:"error"`
}

// status GETs /messages/<id>.
func (b *bundle) status(t *testing.T, id string) (int, statusAnswer) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, b.api.URL+"/messages/"+id, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+apiToken)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var a statusAnswer
	if err := json.NewDecoder(res.Body).Decode(&a); err != nil {
		t.Fatalf("answer is not JSON: %v", err)
	}
	return res.StatusCode, a
}

// waitStatus polls GET /messages/<id> until ok accepts the answer.
func (b *bundle) waitStatus(t *testing.T, id, msg string, ok func(statusAnswer) bool) statusAnswer {
	t.Helper()
	var a statusAnswer
	poll.Until(t, 20*time.Second, "status of "+id+": "+msg, func() bool {
		var code int
		code, a = b.status(t, id)
		return code == http.StatusOK && ok(a)
	})
	return a
}

func TestMessageStatusFollowsTheMessage(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		b.deploy("echo", nil, nil)
		b.deploy("broken", always(http.StatusInternalServerError), nil)
		b.startConnector(t)
		if code, a := b.status(t, "nobody"); code != http.StatusNotFound || a.Error == "" {
			t.Fatalf("unknown id answered %d %+v", code, a)
		}

		ok := b.mustSchedule(t, "echo", []byte("x"), "X-Delay-Duration", "2s", "X-Retries", "1")
		w := b.waitStatus(t, ok.ID, "waiting", func(a statusAnswer) bool { return a.Status == "waiting" })
		if w.DueAt != ok.DueAt || w.Retries != 1 || w.Function != "echo" {
			t.Fatalf("waiting status %+v, want due at %s like the requeue's answer", w, ok.DueAt)
		}
		d := b.waitStatus(t, ok.ID, "delivered", func(a statusAnswer) bool { return a.Status == "delivered" })
		updated, err := time.Parse(time.RFC3339Nano, d.UpdatedAt)
		if err != nil || d.LastStatus != http.StatusOK || d.Retries != 1 || updated.Before(acceptedAt(t, ok)) {
			t.Fatalf("delivered status %+v", d)
		}

		bad := b.mustSchedule(t, "broken", []byte("x"), "X-Max-Retries", "2", "X-Delay-Duration", "1s")
		b.waitStatus(t, bad.ID, "waiting after the first failed call", func(a statusAnswer) bool {
			return a.Status == "waiting" && a.Retries == 1
		})
		dead := b.waitStatus(t, bad.ID, "dead-lettered", func(a statusAnswer) bool { return a.Status == "dead-lettered" })
		if dead.Reason != "max-retries" || dead.Retries != 2 || dead.LastStatus != http.StatusInternalServerError {
			t.Fatalf("dead-lettered status %+v", dead)
		}
	})
}

// TestStatusesOffRecordsNothing: with statuses=false messages are
// accepted and delivered as ever, no status reaches the broker (a
// process with statuses on finds none, where the API would have
// recorded "waiting" at once), and GET /messages/<id> says why it has
// nothing.
func TestStatusesOffRecordsNothing(t *testing.T) {
	forEachBackendWith(t, map[string]string{"statuses": "false"}, func(t *testing.T, b *bundle) {
		echo := b.deploy("echo", nil, nil)
		b.startConnector(t)
		ok := b.mustSchedule(t, "echo", []byte("x"), "X-Delay-Duration", "1s")
		poll.Until(t, 20*time.Second, "the message delivered", func() bool { return echo.Len() == 1 })

		if code, a := b.status(t, ok.ID); code != http.StatusNotFound || !strings.Contains(a.Error, "statuses=false") {
			t.Fatalf("GET /messages/%s with statuses off answered %d %+v", ok.ID, code, a)
		}
		on := b.cfg
		on.Statuses = true
		q := sideQueue(t, on)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if s, err := q.Status(ctx, ok.ID); !errors.Is(err, queue.ErrNoStatus) {
			t.Fatalf("status of %s stored with statuses off: %+v, %v", ok.ID, s, err)
		}
	})
}

func TestWaitingMetricCountsMessagesPerFunction(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		b.deploy("echo", nil, nil)
		waiting := func(fn string) float64 { return metricstest.Sum(t, b.apiReg, "mailbox_waiting", "function", fn) }
		for range 3 {
			b.mustSchedule(t, "later", []byte("x"), "X-Delay-Duration", "1h")
		}
		b.mustSchedule(t, "other", []byte("x"), "X-Delay-Duration", "1h")
		b.mustSchedule(t, "echo", []byte("x"), "X-Delay-Duration", "1s")
		poll.Until(t, 15*time.Second, "the API counts the waiting messages", func() bool {
			return waiting("later") == 3 && waiting("other") == 1 && waiting("echo") == 1
		})
		res, err := http.Get(b.api.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		text, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if !strings.Contains(string(text), `mailbox_waiting{function="later"} 3`+"\n") {
			t.Fatalf("/metrics lacks mailbox_waiting{function=\"later\"} 3:\n%s", text)
		}

		b.startConnector(t)
		poll.Until(t, 20*time.Second, "the delivered message is no longer counted", func() bool {
			return waiting("echo") == 0
		})
		if waiting("later") != 3 || waiting("other") != 1 {
			t.Fatalf("later %v, other %v; want 3 and 1 still waiting", waiting("later"), waiting("other"))
		}
	})
}

// A callback URL nobody listens on is the caller's problem: it must not
// pause deliveries as an unreachable gateway does.
func TestUnreachableCallbackDoesNotPauseDeliveries(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	env := map[string]string{
		"callback_delay": "100ms", "callback_max_retries": "1",
		"callback_allow_hosts": strings.TrimPrefix(closed.URL, "http://"),
	}
	forEachBackendWith(t, env, func(t *testing.T, b *bundle) {
		ok := b.deploy("ok", nil, nil)
		b.mustSchedule(t, "ok", []byte("x"), "X-Delay-Duration", "0", "X-Callback-Url", closed.URL+"/outcome")
		b.startConnector(t)
		poll.Until(t, 15*time.Second, "the callback given up", func() bool {
			return metricstest.Sum(t, b.reg, "mailbox_callbacks_total", "action", "dead-letter") == 1
		})
		if n := metricstest.Sum(t, b.reg, "mailbox_gateway_pauses_total"); n != 0 {
			t.Fatalf("deliveries paused %v times for an unreachable callback URL, want 0", n)
		}
		b.mustSchedule(t, "ok", []byte("y"), "X-Delay-Duration", "0")
		poll.Until(t, 10*time.Second, "the next message delivered", func() bool { return ok.Len() == 2 })
	})
}

// With statuses off the API says at start that no quota bounds what
// waits: the defaults go off too, without a setting of the operator's.
func TestStatusesOffWarnsQuotasOff(t *testing.T) {
	t.Parallel()
	cfg, err := config.Load(func(k string) (string, bool) {
		v, ok := map[string]string{"nats_url": "nats://127.0.0.1:1", "statuses": "false"}[k]
		return v, ok
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logtest.Buffer{}
	q, err := service.OpenQueue(cfg, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if l := logs.String(); !strings.Contains(l, "level=WARN") || !strings.Contains(l, "max_waiting_per_function are off") {
		t.Errorf("no warning that the quotas are off; logs:\n%s", l)
	}
}
