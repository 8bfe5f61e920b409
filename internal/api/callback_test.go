package api

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/callback"
	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/status"
)

// testGateway is the gateway_url of the API tests' callback policy.
const testGateway = "http://gateway.test:8080"

// testCallbacks allows the gateway and the hosts the tests name.
func testCallbacks(t testing.TB) *callback.Policy {
	t.Helper()
	p, err := callback.New(callback.Options{
		GatewayURL: testGateway,
		AllowHosts: []string{"cb", "cb.example.com", "cb.example.com:8443"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRequeueRefusesCallbacksInside: X-Callback-Url may name the gateway's
// functions and callback_allow_hosts only; anything else, a live port on
// loopback and the cloud metadata address first, is a 400 naming the
// header, and nothing is stored.
func TestRequeueRefusesCallbacksInside(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	live := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { calls.Add(1) }))
	defer live.Close()
	_, port, _ := net.SplitHostPort(live.Listener.Addr().String())
	for _, u := range []string{
		"http://127.0.0.1:" + port + "/",
		"http://localhost:" + port + "/",
		"http://[::1]:" + port + "/",
		"http://169.254.169.254/latest/meta-data/",
		"http://[fd00:ec2::254]/",
		"http://10.0.0.1/",
		"http://kubernetes.default.svc/",
		testGateway + "/system/functions",
		testGateway + "/function/../system/functions",
		"http://gateway.test:8081/function/done",
	} {
		t.Run(u, func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), http.Header{envelope.HeaderCallbackURL: {u}})
			if w.Code != http.StatusBadRequest {
				t.Fatalf("status = %d, want 400 (body %q)", w.Code, w.Body)
			}
			if got := decodeJSON(t, w)["field"]; got != envelope.HeaderCallbackURL {
				t.Errorf("field = %v, want %s", got, envelope.HeaderCallbackURL)
			}
			if s, d := b.queue.stored(); len(s)+len(d) != 0 {
				t.Errorf("stored %d messages and %d dead letters, want none", len(s), len(d))
			}
		})
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("the live listener got %d requests", n)
	}
}

// TestRequeueCallbackToTheGateway: a callback to a function through the
// gateway needs no setting.
func TestRequeueCallbackToTheGateway(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	u := testGateway + "/function/done?token=1"
	w := b.do(http.MethodPost, "/deadletter/fn", []byte("x"), http.Header{envelope.HeaderCallbackURL: {u}})
	if w.Code != http.StatusAccepted {
		t.Fatalf("status = %d, want 202 (body %q)", w.Code, w.Body)
	}
	if s, _ := b.queue.stored(); len(s) != 1 || s[0].CallbackURL != u {
		t.Fatalf("stored %+v, want the message with its callback URL whole", s)
	}
}

// TestCallbackStatusIsNoOracle: GET /messages/<id>-cb says where the
// callback is, never what its endpoint answered: the status code and the
// reason would tell whether a port answered.
func TestCallbackStatusIsNoOracle(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	at := testNow.Add(-time.Minute)
	for _, s := range []status.Status{
		{ID: "m1-cb", Function: "fn", Kind: envelope.KindCallback, State: status.DeadLettered, Reason: envelope.ReasonRejected, LastStatus: 404, Retries: 0},
		{ID: "m2-cb", Function: "fn", Kind: envelope.KindCallback, State: status.Delivered, LastStatus: 204},
	} {
		s.AcceptedAt, s.UpdatedAt = at, at
		if err := b.queue.RecordStatus(context.Background(), s); err != nil {
			t.Fatal(err)
		}
	}
	for id, state := range map[string]string{"m1-cb": status.DeadLettered, "m2-cb": status.Delivered} {
		w := b.do(http.MethodGet, "/messages/"+id, nil, nil)
		if w.Code != http.StatusOK {
			t.Fatalf("GET %s answered %d %s", id, w.Code, w.Body)
		}
		m := decodeJSON(t, w)
		if m["status"] != state || m["kind"] != envelope.KindCallback {
			t.Errorf("%s: %s, want %s", id, w.Body, state)
		}
		for _, k := range []string{"last_status", "reason"} {
			if v, ok := m[k]; ok {
				t.Errorf("%s shows %s = %v: %s", id, k, v, w.Body)
			}
		}
	}
}
