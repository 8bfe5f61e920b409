package service_test

// End-to-end tests of the assembled mailbox: the requeue API and the
// connector on an embedded server of each backend, delivering to a
// stand-in for the OpenFaaS gateway.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/openfaas/mailbox/internal/config"
	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/jsserver/jsservertest"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/service"
	"github.com/openfaas/mailbox/internal/stanserver/stanservertest"
)

// call is one invocation the gateway received.
type call struct {
	body   []byte
	header http.Header
	at     time.Time
}

// gateway stands in for the OpenFaaS gateway: /function/<name> runs the
// function's behaviour, /system/* answers connector-sdk's function lookup
// behind basic auth.
type gateway struct {
	addr string
	srv  *http.Server

	mu       sync.Mutex
	calls    map[string][]call
	behave   map[string]func(n int) int // n counts calls from 1; returns the status
	observe  func(call)                 // if set, sees every call
	lookups  atomic.Int64
	denied   atomic.Int64
	user     string
	password string
}

func startGateway(t testing.TB) *gateway {
	t.Helper()
	g := &gateway{calls: map[string][]call{}, behave: map[string]func(int) int{}, user: "admin", password: "secret"}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g.addr = ln.Addr().String()
	g.serve(ln)
	t.Cleanup(g.stop)
	return g
}

func (g *gateway) url() string { return "http://" + g.addr }

func (g *gateway) serve(ln net.Listener) {
	g.srv = &http.Server{Handler: g}
	go func() { _ = g.srv.Serve(ln) }()
}

func (g *gateway) stop() { _ = g.srv.Close() }

// restart serves again on the same address after stop.
func (g *gateway) restart(t *testing.T) {
	t.Helper()
	var ln net.Listener
	poll.Until(t, 5*time.Second, "gateway address free again", func() bool {
		var err error
		ln, err = net.Listen("tcp", g.addr)
		return err == nil
	})
	g.serve(ln)
}

func (g *gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/system/") {
		g.lookups.Add(1)
		if u, p, ok := r.BasicAuth(); !ok || u != g.user || p != g.password {
			g.denied.Add(1)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_, _ = io.WriteString(w, "[]")
		return
	}
	name, ok := strings.CutPrefix(r.URL.Path, "/function/")
	if !ok || r.Method != http.MethodPost {
		http.NotFound(w, r)
		return
	}
	body, _ := io.ReadAll(r.Body)
	g.mu.Lock()
	c := call{body: body, header: r.Header.Clone(), at: time.Now()}
	g.calls[name] = append(g.calls[name], c)
	n := len(g.calls[name])
	behave, observe := g.behave[name], g.observe
	g.mu.Unlock()
	if observe != nil {
		observe(c)
	}
	status := http.StatusOK
	if behave != nil {
		status = behave(n)
	}
	w.WriteHeader(status)
	fmt.Fprintf(w, "answer %d of %s", n, name)
}

func (g *gateway) on(name string, behave func(n int) int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.behave[name] = behave
}

func (g *gateway) callsTo(name string) []call {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]call(nil), g.calls[name]...)
}

// distinctIDs counts the different message ids delivered to name.
func (g *gateway) distinctIDs(name string) int {
	ids := map[string]bool{}
	for _, c := range g.callsTo(name) {
		ids[c.header.Get(envelope.HeaderMessageID)] = true
	}
	return len(ids)
}

// bundle is one mailbox under test.
type bundle struct {
	nats broker
	gw   *gateway
	cfg  config.Config
	api  *httptest.Server
	reg  *prometheus.Registry // the connector's
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
	t.Parallel()
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			test(t, setup(t, backend))
		})
	}
}

func setup(t testing.TB, backend string) *bundle {
	t.Helper()
	b := &bundle{gw: startGateway(t)}
	if backend == "jetstream" {
		b.nats = jetStreamBroker{jsservertest.Start(t)}
	} else {
		b.nats = stanBroker{stanservertest.Start(t)}
	}
	secrets := t.TempDir()
	for name, v := range map[string]string{"basic-auth-user": b.gw.user, "basic-auth-password": b.gw.password} {
		if err := os.WriteFile(filepath.Join(secrets, name), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	env := map[string]string{
		"backend":           backend,
		"nats_url":          b.nats.URL(),
		"gateway_url":       b.gw.url(),
		"basic_auth":        "true",
		"secret_mount_path": secrets,
		"upstream_timeout":  "5s",
	}
	cfg, err := config.Load(func(k string) (string, bool) { v, ok := env[k]; return v, ok }, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.cfg = cfg

	apiReg := prometheus.NewRegistry()
	q, err := service.OpenQueue(cfg, apiReg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	h, err := service.API(cfg, q, apiReg, quiet)
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
func (b *bundle) startConnector(t testing.TB) (stop func()) {
	t.Helper()
	b.reg = prometheus.NewRegistry()
	q, err := service.OpenQueue(b.cfg, b.reg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	d, err := service.Dispatcher(b.cfg, q, b.reg, quiet)
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
		b.startConnector(t)
		body := []byte{0, 1, 2, 0xff, 'h', 'i'}
		code, a, h := b.requeue(t, "echo", body,
			"X-Delay-Duration", "1500ms", "X-Max-Retries", "4", "X-Retries", "1",
			"Content-Type", "application/octet-stream", "X-Custom", "kept",
			"Authorization", "Bearer secret", "Cookie", "session=1")
		if code != http.StatusAccepted || h.Get(envelope.HeaderMessageID) != a.ID || a.ID == "" {
			t.Fatalf("answer %d %+v", code, a)
		}
		due, err := time.Parse(time.RFC3339Nano, a.DueAt)
		if err != nil {
			t.Fatal(err)
		}
		poll.Until(t, 15*time.Second, "function called", func() bool { return len(b.gw.callsTo("echo")) == 1 })
		c := b.gw.callsTo("echo")[0]
		if c.at.Before(due) {
			t.Errorf("delivered %v before it was due", due.Sub(c.at))
		}
		if !bytes.Equal(c.body, body) {
			t.Errorf("body %q, want %q", c.body, body)
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
			if got := c.header.Get(k); got != v {
				t.Errorf("header %s = %q, want %q", k, got, v)
			}
		}
	})
}

func TestFailingFunctionIsDeadLetteredAfterMaxRetries(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		b.gw.on("broken", func(int) int { return http.StatusInternalServerError })
		b.startConnector(t)
		a := b.mustSchedule(t, "broken", []byte("payload"), "X-Max-Retries", "2", "X-Delay-Duration", "200ms")

		var dead []*envelope.Envelope
		poll.Until(t, 20*time.Second, "dead letter stored", func() bool {
			dead = b.nats.DeadLetters(t)
			return len(dead) == 1
		})
		calls := b.gw.callsTo("broken")
		if len(calls) != 3 {
			t.Fatalf("function called %d times, want 3 (X-Retries 0, 1, 2)", len(calls))
		}
		for i, c := range calls {
			if got := c.header.Get(envelope.HeaderRetries); got != strconv.Itoa(i) {
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
			return counter(t, b.reg, "mailbox_dead_letters_total") == 1
		})
	})
}

func TestFunctionSucceedingOnThirdCallIsCalledThreeTimes(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		b.gw.on("flaky", func(n int) int {
			if n < 3 {
				return http.StatusTooManyRequests
			}
			return http.StatusOK
		})
		b.startConnector(t)
		b.mustSchedule(t, "flaky", []byte("x"), "X-Max-Retries", "5", "X-Delay-Duration", "100ms")
		poll.Until(t, 15*time.Second, "third call", func() bool { return len(b.gw.callsTo("flaky")) >= 3 })
		// A fourth call would follow within the 100 ms delay if the third
		// success were not acknowledged; the delivered counter settles first.
		poll.Until(t, 5*time.Second, "delivery counted", func() bool {
			return counter(t, b.reg, "mailbox_delivered_total") == 1
		})
		if n := len(b.gw.callsTo("flaky")); n != 3 {
			t.Fatalf("function called %d times, want 3", n)
		}
		if dead := b.nats.DeadLetters(t); len(dead) != 0 {
			t.Fatalf("%d dead letters, want none", len(dead))
		}
	})
}

func TestRequeueAboveMaxRetriesIsDeadLetter(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
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
		if n := len(b.gw.callsTo("done")); n != 0 {
			t.Fatalf("function called %d times, want 0", n)
		}
	})
}

func TestConnectorAndNATSRestartsLoseNothing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
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
		poll.Until(t, 30*time.Second, "every message delivered", func() bool { return b.gw.distinctIDs("steady") == n })
	})
}

func TestNATSRestartDuringDeliveryLosesNothing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		b.startConnector(t)
		const n = 30
		for i := range n {
			b.mustSchedule(t, "steady", []byte(strconv.Itoa(i)), "X-Delay-Duration", strconv.Itoa(i%4))
		}
		poll.Until(t, 15*time.Second, "some delivered", func() bool { return b.gw.distinctIDs("steady") > 0 })
		b.nats.Restart(t)
		poll.Until(t, 30*time.Second, "every message delivered", func() bool { return b.gw.distinctIDs("steady") == n })
	})
}

func TestShortDelayNotBehindLongOnes(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		b.startConnector(t)
		for i := range 200 {
			b.mustSchedule(t, "slow", []byte(strconv.Itoa(i)), "X-Delay-Duration", "3600")
		}
		for i := range 5 {
			b.mustSchedule(t, "fast", []byte(strconv.Itoa(i)), "X-Delay-Duration", "1")
		}
		poll.Until(t, 15*time.Second, "1 s messages delivered", func() bool { return b.gw.distinctIDs("fast") == 5 })
		if n := len(b.gw.callsTo("slow")); n != 0 {
			t.Fatalf("%d one-hour messages delivered early", n)
		}
	})
}

func TestGatewayOutagePausesDeliveries(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		b.startConnector(t)
		// After the connector's check at start, so that the outage is
		// found by failing calls.
		poll.Until(t, 10*time.Second, "the connector asked the gateway", func() bool { return b.gw.lookups.Load() > 0 })
		b.gw.stop()
		const n = 10
		for i := range n {
			b.mustSchedule(t, "patient", []byte(strconv.Itoa(i)), "X-Delay-Duration", "0", "X-Max-Retries", "1")
		}
		// The first calls fail and are scheduled again; then the connector
		// pauses and probes the gateway with the function lookup until it
		// answers, instead of spending every retry.
		poll.Until(t, 10*time.Second, "failed calls scheduled again and deliveries paused", func() bool {
			return counter(t, b.reg, "mailbox_retries_scheduled_total") > 0 && gauge(t, b.reg, "mailbox_gateway_up") == 0
		})
		b.gw.restart(t)
		poll.Until(t, 30*time.Second, "every message delivered after the outage", func() bool { return b.gw.distinctIDs("patient") == n })
		if dead := b.nats.DeadLetters(t); len(dead) != 0 {
			t.Fatalf("%d dead letters after a gateway outage, want none", len(dead))
		}
		for _, c := range b.gw.callsTo("patient") {
			if r := c.header.Get(envelope.HeaderRetries); r != "0" && r != "1" {
				t.Errorf("delivered with X-Retries %s, want 0 or 1: calls waiting at the paused gate do not count", r)
			}
		}
		if gauge(t, b.reg, "mailbox_gateway_up") != 1 {
			t.Errorf("mailbox_gateway_up is not 1 after the gateway is back")
		}
		if b.gw.lookups.Load() == 0 || b.gw.denied.Load() != 0 {
			t.Fatalf("lookups %d, denied %d: want authenticated lookups", b.gw.lookups.Load(), b.gw.denied.Load())
		}
	})
}

func TestConnectorStartedWhileGatewayDownSpendsNoRetry(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		b.gw.stop()
		const n = 5
		for i := range n {
			b.mustSchedule(t, "early", []byte(strconv.Itoa(i)), "X-Delay-Duration", "0", "X-Max-Retries", "3")
		}
		b.startConnector(t)
		poll.Until(t, 10*time.Second, "deliveries paused", func() bool { return gauge(t, b.reg, "mailbox_gateway_up") == 0 })
		b.gw.restart(t)
		poll.Until(t, 30*time.Second, "every message delivered", func() bool { return b.gw.distinctIDs("early") == n })
		for _, c := range b.gw.callsTo("early") {
			if r := c.header.Get(envelope.HeaderRetries); r != "0" {
				t.Errorf("delivered with X-Retries %s, want 0: the connector checks the gateway before its first call", r)
			}
		}
	})
}

func TestConnectorReportsRefusedCredentialsAtStart(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *bundle) {
		secrets := t.TempDir()
		for name, v := range map[string]string{"basic-auth-user": b.gw.user, "basic-auth-password": "wrong"} {
			if err := os.WriteFile(filepath.Join(secrets, name), []byte(v), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		b.cfg.SecretMountPath = secrets
		b.startConnector(t)
		poll.Until(t, 10*time.Second, "the gateway refused the connector's lookup", func() bool { return b.gw.denied.Load() > 0 })
		// Refused credentials do not stop deliveries: CE's /function/
		// routes need none.
		b.mustSchedule(t, "anyway", []byte("x"), "X-Delay-Duration", "0")
		poll.Until(t, 10*time.Second, "delivered", func() bool { return b.gw.distinctIDs("anyway") == 1 })
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
func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	return sum(t, reg, name, func(m *dto.Metric) float64 { return m.GetCounter().GetValue() })
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	return sum(t, reg, name, func(m *dto.Metric) float64 { return m.GetGauge().GetValue() })
}

func sum(t *testing.T, reg *prometheus.Registry, name string, value func(*dto.Metric) float64) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				sum += value(m)
			}
		}
	}
	return sum
}
