package requeue_test

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/mailboxtest"
	"github.com/openfaas/mailbox/requeue"
)

const token = "verify-test-token"

// Without a verified delivery the incoming control headers are anyone's:
// a caller of a public function must not raise its retries, take another
// message's id or turn its dead-letter routing off.
func TestHeaderDropsUnverifiedControlHeaders(t *testing.T) {
	t.Parallel()
	in := hdr("X-Retries", "0", "X-Max-Retries", "10000", "X-Delay-Duration", "0",
		"X-Mailbox-Message-Id", "victim", "X-Dead-Letter-From", "orders", "Content-Type", "text/plain")
	got, err := requeue.Header(in, requeue.WithDefaultMaxRetries(3), requeue.WithDefaultDelay(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	want := hdr("X-Retries", "1", "X-Max-Retries", "3", "X-Delay-Duration", "60", "Content-Type", "text/plain")
	if !equalHeader(got, want) {
		t.Fatalf("Header of an unverified request\n got %v\nwant %v", got, want)
	}
	// Unverified, X-Retries still counts up, so a function requeuing the
	// unsigned deliveries of a connector without the token ends at its
	// X-Max-Retries instead of starting again at 1 for ever; one that is
	// not a count is ignored.
	for in, want := range map[string]string{"4": "5", "-1": "1", "x": "1", "": "1"} {
		got, err := requeue.Header(hdr("X-Retries", in), requeue.WithDefaultMaxRetries(3))
		if err != nil || got.Get("X-Retries") != want {
			t.Errorf("Header of an unverified X-Retries %q: %v %v, want X-Retries %s", in, got, err, want)
		}
	}
	// Signed with another token: no better.
	r := httptest.NewRequest(http.MethodPost, "/", nil)
	r.Header = in.Clone()
	signAsTheMailbox(r.Header, nil, "another-token")
	if _, err := requeue.Verify(r, nil, token); !errors.Is(err, requeue.ErrBadSignature) {
		t.Fatalf("Verify with another token's signature = %v, want ErrBadSignature", err)
	}
}

func TestVerify(t *testing.T) {
	t.Parallel()
	body := []byte(`{"n":1}`)
	signed := func() *http.Request {
		r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
		r.Header.Set("X-Retries", "2")
		r.Header.Set("X-Max-Retries", "5")
		r.Header.Set("X-Mailbox-Message-Id", "m-1")
		r.Header.Set(requeue.HeaderFunction, "fn")
		signAsTheMailbox(r.Header, body, token)
		return r
	}
	d, err := requeue.Verify(signed(), body, token)
	if err != nil || d.ID != "m-1" || d.Retries != 2 || d.Function != "fn" || time.Since(d.Time) > time.Minute {
		t.Fatalf("Verify = %+v, %v", d, err)
	}
	for name, change := range map[string]func(r *http.Request) []byte{
		"body changed":           func(r *http.Request) []byte { return []byte(`{"n":2}`) },
		"body not passed":        func(r *http.Request) []byte { return nil },
		"id changed":             func(r *http.Request) []byte { r.Header.Set("X-Mailbox-Message-Id", "m-2"); return body },
		"retries changed":        func(r *http.Request) []byte { r.Header.Set("X-Retries", "0"); return body },
		"max retries changed":    func(r *http.Request) []byte { r.Header.Set("X-Max-Retries", "10000"); return body },
		"delay added":            func(r *http.Request) []byte { r.Header.Set("X-Delay-Duration", "0"); return body },
		"function changed":       func(r *http.Request) []byte { r.Header.Set(requeue.HeaderFunction, "other"); return body },
		"dead-letter mark added": func(r *http.Request) []byte { r.Header.Set("X-Dead-Letter-From", "x"); return body },
		"timestamp changed": func(r *http.Request) []byte {
			r.Header.Set(requeue.HeaderTimestamp, "1")
			return body
		},
		"id given twice": func(r *http.Request) []byte { r.Header.Add("X-Mailbox-Message-Id", "m-1"); return body },
		"not v1":         func(r *http.Request) []byte { r.Header.Set(requeue.HeaderDeliverySignature, "v2=00"); return body },
	} {
		r := signed()
		b := change(r)
		if _, err := requeue.Verify(r, b, token); !errors.Is(err, requeue.ErrBadSignature) {
			t.Errorf("%s: Verify = %v, want ErrBadSignature", name, err)
		}
	}
	r := signed()
	r.Header.Del(requeue.HeaderDeliverySignature)
	if _, err := requeue.Verify(r, body, token); !errors.Is(err, requeue.ErrNotSigned) {
		t.Errorf("unsigned: Verify = %v, want ErrNotSigned", err)
	}
	if _, err := requeue.Verify(signed(), body, " "); err == nil {
		t.Error("Verify with an empty token: no error")
	}
	// An old signature (a captured delivery sent again later) is refused.
	old := signed()
	old.Header.Set(requeue.HeaderTimestamp, "1000")
	if _, err := requeue.Verify(old, body, token); !errors.Is(err, requeue.ErrBadSignature) {
		t.Errorf("old timestamp: Verify = %v, want ErrBadSignature", err)
	}
}

// TestVerifyThroughTheGateway: the OpenFaaS gateway gives every call that
// has none an X-Call-Id of its own (and X-Start-Time, X-Forwarded-For) on
// the way to the function, so a delivery or a callback the mailbox signed
// without one still verifies, whatever the gateway set. Found by the
// OpenFaaS test bed: callbacks through the gateway never verified.
func TestVerifyThroughTheGateway(t *testing.T) {
	t.Parallel()
	body := []byte("flaky: 200")
	r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
	r.Header.Set("X-Mailbox-Message-Id", "m-1")
	r.Header.Set("X-Mailbox-Outcome", "delivered")
	r.Header.Set("X-Function-Status", "200")
	r.Header.Set(requeue.HeaderFunction, "fn")
	signAsTheMailbox(r.Header, body, token)
	// As the gateway's call-id middleware and proxy add them.
	r.Header.Set("X-Call-Id", "8f3b6c2e-0b1a-4c7e-9a55-2d9e1f0c7a11")
	r.Header.Set("X-Start-Time", "1765126040000000000")
	r.Header.Set("X-Forwarded-For", "10.62.0.1")
	if d, err := requeue.Verify(r, body, token); err != nil || d.ID != "m-1" {
		t.Fatalf("Verify after the gateway = %+v, %v, want the delivery", d, err)
	}
}

// received is what a function got, verified.
type received struct {
	delivery
	verified *requeue.Delivery
	callback *requeue.Callback // from callbackVerifier
	err      error
	req      *http.Request
}

// callbackVerifier is a callback receiver that verifies what it is sent.
func callbackVerifier() (http.Handler, <-chan received) {
	got := make(chan received, 16)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b bytes.Buffer
		_, _ = b.ReadFrom(r.Body)
		c, err := requeue.VerifyCallback(r, b.Bytes(), token)
		got <- received{delivery: delivery{header: r.Header.Clone(), body: b.String()}, callback: c, err: err}
	}), got
}

// verifier is a function that verifies what it is sent.
func verifier() (http.Handler, <-chan received) {
	got := make(chan received, 16)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b bytes.Buffer
		_, _ = b.ReadFrom(r.Body)
		d, err := requeue.Verify(r, b.Bytes(), token)
		rr := r.Clone(r.Context())
		rr.Body = http.NoBody
		got <- received{delivery: delivery{header: r.Header.Clone(), body: b.String()}, verified: d, err: err, req: rr}
	}), got
}

func wait(t *testing.T, ch <-chan received, what string) received {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: nothing received", what)
	}
	return received{}
}

// Every call the connector makes carries a signature the receiver can
// verify with the token: deliveries, routed dead letters and callbacks.
func TestSignedDeliveries(t *testing.T) {
	t.Parallel()
	fn, fnGot := verifier()
	dlq, dlqGot := verifier()
	cb, cbGot := callbackVerifier()
	m := mailboxtest.Start(t, mailboxtest.Options{Token: token, Functions: map[string]http.Handler{"fn": fn, "dlq": dlq, "cb": cb}})

	post := func(fn string, body []byte, headers ...string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, m.URL+"/deadletter/"+fn, bytes.NewReader(body))
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header.Set(headers[i], headers[i+1])
		}
		if err := requeue.SignRequest(req, body, token); err != nil {
			t.Fatal(err)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res
	}

	// A delivery, with a callback.
	if res := post("fn", []byte("work"), "X-Mailbox-Message-Id", "m-1", "X-Delay-Duration", "0",
		"X-Callback-Url", m.GatewayURL+"/function/cb"); res.StatusCode != http.StatusAccepted {
		t.Fatalf("signed requeue: %d", res.StatusCode)
	}
	got := wait(t, fnGot, "fn")
	if got.err != nil || got.verified.ID != "m-1" || got.verified.Retries != 0 || got.verified.Function != "fn" {
		t.Fatalf("the delivery to fn: %+v, %v (headers %v)", got.verified, got.err, got.header)
	}
	c := wait(t, cbGot, "the callback")
	if c.err != nil || c.callback.ID != "m-1" || c.callback.Function != "fn" || c.callback.Outcome != "delivered" ||
		c.callback.Status != http.StatusOK || c.callback.Attempts != 1 {
		t.Fatalf("the callback: %+v, %v (headers %v)", c.callback, c.err, c.header)
	}

	// The function requeues the verified delivery: its id and attempts
	// carry over.
	res, err := requeue.Request(t.Context(), nil, m.URL, "fn", got.req, []byte(got.body), requeue.WithToken(token), requeue.WithDelay(0))
	if err != nil || res.ID != "m-1" || res.Retries != 1 {
		t.Fatalf("requeue of the verified delivery = %+v, %v; want m-1, retries 1", res, err)
	}
	again := wait(t, fnGot, "fn, again")
	if again.err != nil || again.verified.ID != "m-1" || again.verified.Retries != 1 {
		t.Fatalf("the second delivery: %+v, %v", again.verified, again.err)
	}
	// The same request from an outside caller, unsigned: a requeue under a
	// new id with the function's own limits, whatever it claims; only its
	// X-Retries still counts up.
	forged := httptest.NewRequest(http.MethodPost, "/", nil)
	forged.Header = again.header.Clone()
	forged.Header.Del(requeue.HeaderDeliverySignature)
	forged.Header.Set("X-Max-Retries", "10000")
	res, err = requeue.Request(t.Context(), nil, m.URL, "fn", forged, []byte(again.body), requeue.WithToken(token), requeue.WithDelay(time.Hour))
	if err != nil || res.ID == "m-1" || res.Retries != 2 || res.MaxRetries == 10000 {
		t.Fatalf("requeue of an unsigned request = %+v, %v; want a new id, retries 2, the default max retries", res, err)
	}

	// A routed dead letter.
	if res := post("fn", []byte("spent"), "X-Mailbox-Message-Id", "m-2", "X-Retries", "5", "X-Max-Retries", "1",
		"X-Dead-Letter-Function", "dlq"); res.StatusCode != http.StatusOK {
		t.Fatalf("signed requeue with its retries spent: %d", res.StatusCode)
	}
	dl := wait(t, dlqGot, "dlq")
	if dl.err != nil || dl.verified.Function != "dlq" || dl.body != "spent" || dl.header.Get("X-Dead-Letter-From") != "fn" {
		t.Fatalf("the routed dead letter: %+v, %v (headers %v)", dl.verified, dl.err, dl.header)
	}
	// The dead-letter function may send it back where it came from, still
	// marked (so it is not routed again); to any other function it is a
	// new message.
	back, err := requeue.Request(t.Context(), nil, m.URL, "fn", dl.req, []byte(dl.body), requeue.WithToken(token), requeue.WithDelay(time.Hour))
	if err != nil || back.ID != "m-2-dl" {
		t.Fatalf("the routed dead letter requeued to fn = %+v, %v; want its id m-2-dl carried over", back, err)
	}
	elsewhere, err := requeue.Request(t.Context(), nil, m.URL, "elsewhere", dl.req, []byte(dl.body), requeue.WithToken(token), requeue.WithDelay(time.Hour))
	if err != nil || elsewhere.ID == "m-2-dl" {
		t.Fatalf("the routed dead letter requeued to elsewhere = %+v, %v; want a new id", elsewhere, err)
	}
}

// TestCallbackIsNotADelivery: a callback's signature names the function
// it reports on (X-Mailbox-Function), so its receiver could replay it, in
// the window, to that function as if the mailbox had delivered it. It is
// signed as a callback: Verify refuses it. And a delivery signed for one
// function carries nothing over when requeued for another (its id,
// X-Max-Retries), as a delivery replayed to another function would.
func TestCallbackIsNotADelivery(t *testing.T) {
	t.Parallel()
	fn, fnGot := verifier()
	cb, cbGot := verifier()
	m := mailboxtest.Start(t, mailboxtest.Options{Token: token, Functions: map[string]http.Handler{"fn": fn, "cb": cb}})
	req, _ := http.NewRequest(http.MethodPost, m.URL+"/deadletter/fn", bytes.NewReader([]byte("work")))
	req.Header.Set("X-Mailbox-Message-Id", "m-1")
	req.Header.Set("X-Max-Retries", "7")
	req.Header.Set("X-Delay-Duration", "0")
	req.Header.Set("X-Callback-Url", m.GatewayURL+"/function/cb")
	if err := requeue.SignRequest(req, []byte("work"), token); err != nil {
		t.Fatal(err)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusAccepted {
		t.Fatalf("signed requeue: %d", res.StatusCode)
	}
	got := wait(t, fnGot, "fn")
	if got.err != nil {
		t.Fatalf("the delivery does not verify: %v", got.err)
	}
	c := wait(t, cbGot, "the callback")
	// The callback replayed to fn, which checks deliveries.
	replay := httptest.NewRequest(http.MethodPost, "/function/fn", nil)
	replay.Header = c.header.Clone()
	if d, err := requeue.Verify(replay, []byte(c.body), token); !errors.Is(err, requeue.ErrBadSignature) {
		t.Errorf("a callback replayed as a delivery: Verify = %+v, %v; want ErrBadSignature", d, err)
	}
	if cb, err := requeue.VerifyCallback(replay, []byte(c.body), token); err != nil || cb.ID != "m-1" || cb.Function != "fn" {
		t.Errorf("VerifyCallback of the callback = %+v, %v; want m-1 reporting on fn", cb, err)
	}
	// Nor does a delivery verify as a callback.
	if cb, err := requeue.VerifyCallback(got.req, []byte(got.body), token); !errors.Is(err, requeue.ErrBadSignature) {
		t.Errorf("a delivery as a callback: VerifyCallback = %+v, %v; want ErrBadSignature", cb, err)
	}

	// The delivery to fn replayed to other, which requeues itself.
	res2, err := requeue.Request(t.Context(), nil, m.URL, "other", got.req, []byte(got.body), requeue.WithToken(token), requeue.WithDelay(time.Hour))
	if err != nil || res2.ID == "m-1" || res2.MaxRetries == 7 {
		t.Errorf("requeue for other of a delivery to fn = %+v, %v; want a new id and other's own max retries", res2, err)
	}
}
