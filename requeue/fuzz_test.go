package requeue_test

import (
	"bytes"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/openfaas/mailbox/requeue"
)

// FuzzHeader: whatever the incoming headers, Header never panics; without
// a verified delivery nothing but Content-Type comes from them; trusted,
// X-Retries is the incoming count plus one.
func FuzzHeader(f *testing.F) {
	f.Add("X-Retries", "2", "X-Max-Retries", "10000", false)
	f.Add("X-Retries", "9223372036854775807", "X-Mailbox-Message-Id", "a", true)
	f.Add("X-Dead-Letter-From", "fn", "X-Delay-Duration", "0", true)
	f.Add("x-retries", "-1", "Content-Type", "text/plain", false)
	f.Fuzz(func(t *testing.T, n1, v1, n2, v2 string, trust bool) {
		in := http.Header{}
		in.Add(n1, v1)
		in.Add(n2, v2)
		var opts []requeue.Option
		if trust {
			opts = append(opts, requeue.TrustIncoming())
		}
		out, err := requeue.Header(in, opts...)
		if err != nil {
			if !trust {
				t.Fatalf("Header of untrusted headers failed: %v", err)
			}
			return
		}
		n, err := strconv.Atoi(out.Get("X-Retries"))
		if err != nil || n < 1 {
			t.Fatalf("X-Retries %q", out.Get("X-Retries"))
		}
		for k := range out {
			if k != "X-Retries" && k != "Content-Type" && !trust {
				t.Fatalf("untrusted %s carried over: %v", k, out)
			}
		}
		// Trusted or not, a single X-Retries that is a count counts up;
		// untrusted, anything else is ignored.
		want := 1
		if vs := in.Values("X-Retries"); len(vs) == 1 {
			if m, err := strconv.Atoi(vs[0]); err == nil && vs[0] != "" && strings.Trim(vs[0], "0123456789") == "" && m < math.MaxInt {
				want = m + 1
			}
		}
		if n != want {
			t.Fatalf("X-Retries %d from %q (trusted %v), want %d", n, in.Values("X-Retries"), trust, want)
		}
	})
}

// FuzzVerify: Verify never panics, refuses what the mailbox did not sign
// and accepts every delivery it did, whatever headers and body it carries.
func FuzzVerify(f *testing.F) {
	f.Add("X-Mailbox-Message-Id", "m-1", "2", []byte("body"), "", true)
	f.Add("X-Retries", "x", "1", []byte{}, "v1=00", false)
	f.Add("X-Mailbox-Function", "fn\n", "1800000000", []byte("b"), "v1=", true)
	f.Fuzz(func(t *testing.T, name, value, ts string, body []byte, sig string, sign bool) {
		r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
		r.Header.Add(name, value)
		if sign {
			signAsTheMailboxTB(t, r.Header, body)
		} else {
			r.Header.Set(requeue.HeaderTimestamp, ts)
			r.Header.Set(requeue.HeaderDeliverySignature, sig)
		}
		d, err := requeue.Verify(r, body, token)
		if !sign && err == nil {
			t.Fatalf("accepted an unsigned request: %+v", d)
		}
		if sign && err != nil && !strings.ContainsAny(value, "\r\n") &&
			!(http.CanonicalHeaderKey(name) == "X-Retries") &&
			!strings.EqualFold(name, requeue.HeaderTimestamp) && !strings.EqualFold(name, requeue.HeaderDeliverySignature) {
			t.Fatalf("refused a delivery the mailbox signed: %v (%s: %q)", err, name, value)
		}
		if err != nil && !errors.Is(err, requeue.ErrBadSignature) && !errors.Is(err, requeue.ErrNotSigned) {
			t.Fatalf("Verify error %v wraps neither ErrBadSignature nor ErrNotSigned", err)
		}
		// A delivery is never a callback, whatever it carries.
		if c, err := requeue.VerifyCallback(r, body, token); err == nil {
			t.Fatalf("VerifyCallback accepted a delivery: %+v", c)
		}
	})
}

// signAsTheMailboxTB signs h and body as the connector does, skipping
// what it cannot sign (a line break).
func signAsTheMailboxTB(t *testing.T, h http.Header, body []byte) {
	defer func() {
		if recover() != nil {
			t.Skip("not signable")
		}
	}()
	signAsTheMailbox(h, body, token)
}
