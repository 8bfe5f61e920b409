package api

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/auth"
)

// The value that opened every endpoint before signatures covered the
// request: sha256=HMAC(token, ""), the signature of the empty body.
func emptyBodySignature() string {
	m := hmac.New(sha256.New, []byte(testToken))
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

func TestEmptyBodySignatureOpensNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, withToken(t, true))
	h := http.Header{auth.HeaderSignature: {emptyBodySignature()}}
	wantError(t, b.do(http.MethodGet, "/messages/abc", nil, h), http.StatusUnauthorized, "Authorization")
	w := b.do(http.MethodPost, "/deadletter/fn", nil, h)
	if w.Code != http.StatusUnauthorized {
		t.Fatalf("requeue with the empty body's signature: %d %s", w.Code, w.Body)
	}
	wantNothingStored(t, b.queue)
}

// A signature made for one requeue is valid for that request only.
func TestSignatureMeansOneRequest(t *testing.T) {
	t.Parallel()
	b := setup(t, withToken(t, true))
	token, _ := auth.NewToken(testToken)
	body := []byte(`{"order":1}`)
	captured := http.Header{
		"X-Max-Retries":    {"2"},
		"X-Delay-Duration": {"60"},
		"X-Callback-Url":   {testGateway + "/function/cb"},
		"Content-Type":     {"application/json"},
	}
	if err := token.SignRequest(http.MethodPost, "/deadletter/a", captured, body, time.Now()); err != nil {
		t.Fatal(err)
	}
	changed := func(name, value string) http.Header {
		h := captured.Clone()
		h.Set(name, value)
		return h
	}
	for _, c := range []struct {
		name   string
		path   string
		header http.Header
		body   []byte
		field  string
	}{
		{"another path", "/deadletter/other", captured, body, auth.HeaderSignature},
		{"X-Max-Retries raised", "/deadletter/a", changed("X-Max-Retries", "10000"), body, auth.HeaderSignature},
		{"X-Delay-Duration 0", "/deadletter/a", changed("X-Delay-Duration", "0"), body, auth.HeaderSignature},
		{"X-Callback-Url changed", "/deadletter/a", changed("X-Callback-Url", "http://169.254.169.254/latest"), body, auth.HeaderSignature},
		{"X-Mailbox-Message-Id added", "/deadletter/a", changed("X-Mailbox-Message-Id", "victim"), body, auth.HeaderSignature},
		{"another body", "/deadletter/a", captured, []byte(`{"order":2}`), auth.HeaderSignature},
		// Stored and passed on: it says how the function reads the body.
		{"Content-Type changed", "/deadletter/a", changed("Content-Type", "application/x-www-form-urlencoded"), body, auth.HeaderSignature},
		{"timestamp moved", "/deadletter/a", changed("X-Mailbox-Timestamp", strconv.FormatInt(time.Now().Unix()+1, 10)), body, auth.HeaderSignature},
	} {
		w := b.do(http.MethodPost, c.path, c.body, c.header)
		if w.Code != http.StatusUnauthorized {
			t.Errorf("%s: %d %s, want 401", c.name, w.Code, w.Body)
			continue
		}
		wantError(t, w, http.StatusUnauthorized, c.field)
	}

	old := http.Header{}
	if err := token.SignRequest(http.MethodPost, "/deadletter/a", old, body, time.Now().Add(-6*time.Minute)); err != nil {
		t.Fatal(err)
	}
	wantError(t, b.do(http.MethodPost, "/deadletter/a", body, old), http.StatusUnauthorized, "X-Mailbox-Timestamp")
	wantNothingStored(t, b.queue)

	w := b.do(http.MethodPost, "/deadletter/a", body, captured)
	if w.Code != http.StatusAccepted {
		t.Fatalf("the signed request as signed: %d %s", w.Code, w.Body)
	}
	scheduled, _ := b.queue.stored()
	if len(scheduled) != 1 || scheduled[0].Header.Get(auth.HeaderSignature) != "" || scheduled[0].Header.Get("X-Mailbox-Timestamp") != "" {
		t.Fatalf("stored %d, headers %v: the signature must not be stored", len(scheduled), scheduled[0].Header)
	}

	// A signature is for requeues: the status of the message wants the
	// bearer token, however it is signed.
	h := http.Header{}
	if err := token.SignRequest(http.MethodGet, "/messages/abc", h, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	wantError(t, b.do(http.MethodGet, "/messages/abc", nil, h), http.StatusUnauthorized, "Authorization")
}
