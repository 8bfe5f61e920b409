// Package signature is the mailbox's one signing scheme, shared by the
// server (internal/auth, internal/dispatch) and the public requeue package,
// so that both sides build the same bytes. It uses only the standard
// library.
//
// # Keys
//
// No value is ever keyed with the token itself. Each purpose has its own
// key, HMAC-SHA256(token, "mailbox/v1/<purpose>"), so a value made for one
// purpose (a session cookie, a delivery's signature) is never valid for
// another (a requeue):
//
//	request  = HMAC-SHA256(token, "mailbox/v1/request")   signed requeues
//	session  = HMAC-SHA256(token, "mailbox/v1/session")   web page sessions
//	delivery = HMAC-SHA256(token, "mailbox/v1/delivery")  signed deliveries
//
// # Signed requests (to the mailbox)
//
// A requeue may be signed instead of carrying the token: the caller sends
//
//	X-Mailbox-Timestamp: <unix seconds>
//	X-Mailbox-Signature: v1=<hex HMAC-SHA256(request key, canonical request)>
//
// where the canonical request is these lines joined by "\n" (no newline
// after the last):
//
//	mailbox-request-v1
//	<method, e.g. POST>
//	<escaped path the mailbox receives, e.g. /deadletter/fn (behind the
//	 gateway: without /function/mailbox)>
//	<the X-Mailbox-Timestamp value>
//	<name>:<value>   one line per value of each RequestHeaders entry present
//	                 (the control headers, then Content-Type), in
//	                 RequestHeaders' order; name in lower case, value
//	                 without surrounding spaces or tabs
//	<hex SHA-256 of the body>
//
// A signature is accepted only within a window (5 minutes by default) of
// the timestamp, on the method, path, control headers and body it was made
// for. Within the window the same request can be sent again; it is then
// stored again (with X-Mailbox-Message-Id, as a repeat of the same id).
//
// # Signed deliveries (from the mailbox)
//
// With a token, every call the connector makes (to a function, a
// dead-letter function or a callback URL) carries
//
//	X-Mailbox-Timestamp: <unix seconds>
//	X-Mailbox-Delivery-Signature: v1=<hex HMAC-SHA256(delivery key, canonical delivery)>
//
// where the canonical delivery is, joined by "\n":
//
//	mailbox-delivery-v1   (mailbox-callback-v1 for a callback)
//	<the X-Mailbox-Timestamp value>
//	<name>:<value>   as above, for each DeliveryHeaders entry present
//	<hex SHA-256 of the body>
//
// The first line tells a callback from a delivery: a callback names the
// function it reports on in X-Mailbox-Function, and its receiver must not
// be able to pass it off as a delivery to that function.
//
// DeliveryHeaders hold the message id, attempts, target function and every
// other control header the mailbox sets, so a receiver that checks the
// signature may trust them.
package signature

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The headers of the scheme.
const (
	HeaderRequest   = "X-Mailbox-Signature"
	HeaderDelivery  = "X-Mailbox-Delivery-Signature"
	HeaderTimestamp = "X-Mailbox-Timestamp"
	// HeaderFunction names the function a signed delivery is for: the
	// one called, or for a callback the one whose outcome it reports.
	HeaderFunction = "X-Mailbox-Function"
)

// The purposes keys are derived for.
const (
	PurposeRequest  = "request"
	PurposeSession  = "session"
	PurposeDelivery = "delivery"
)

// DefaultWindow is how far a signature's timestamp may be from now.
const DefaultWindow = 5 * time.Minute

// version prefixes every signature value.
const version = "v1="

// RequestHeaders are the headers a requeue's signature covers: every
// header the mailbox reads on a requeue, and Content-Type, which is
// stored and passed on and says how the function reads the body.
var RequestHeaders = []string{
	"X-Retries", "X-Max-Retries", "X-Delay-Duration", "X-Max-Delay", "X-Backoff",
	"X-Message-TTL", "X-Mailbox-Message-Id", "X-Callback-Url", "X-Dead-Letter-Function",
	"X-Dead-Letter-Reason", "X-Dead-Letter-From", "X-Dead-Letter-Time", "X-Dead-Letter-Retries",
	"Content-Type",
}

// DeliveryHeaders are the headers a delivery's signature covers: every
// header the mailbox sets on what it delivers, except X-Call-Id, which the
// OpenFaaS gateway sets on the way to the function when the call has none
// (a signature covering it would never verify behind the gateway).
var DeliveryHeaders = []string{
	"X-Mailbox-Message-Id", "X-Retries", HeaderFunction, "X-Max-Retries", "X-Delay-Duration",
	"X-Dead-Letter-Reason", "X-Dead-Letter-From", "X-Dead-Letter-Time", "X-Dead-Letter-Retries",
	"X-Mailbox-Outcome", "X-Function-Status", "X-Function-Name", "X-Mailbox-Attempts",
}

// Key derives the key for purpose from token.
func Key(token []byte, purpose string) []byte {
	m := hmac.New(sha256.New, token)
	m.Write([]byte("mailbox/v1/" + purpose))
	return m.Sum(nil)
}

// ErrMalformed is returned for a request that cannot be put in canonical
// form: a newline in a signed value, which would make two requests read
// the same.
var ErrMalformed = errors.New("a signed header, the method or the path holds a line break")

// Request is the canonical request (see the package documentation).
func Request(method, escapedPath, timestamp string, h http.Header, body []byte) (string, error) {
	var b strings.Builder
	b.WriteString("mailbox-request-v1\n")
	for _, v := range []string{method, escapedPath, timestamp} {
		if strings.ContainsAny(v, "\r\n") {
			return "", ErrMalformed
		}
		b.WriteString(v)
		b.WriteByte('\n')
	}
	return finish(&b, h, RequestHeaders, body)
}

// Delivery is the canonical delivery (see the package documentation): a
// call to a function, or a dead letter routed to one.
func Delivery(timestamp string, h http.Header, body []byte) (string, error) {
	return call("mailbox-delivery-v1\n", timestamp, h, body)
}

// Callback is the canonical callback: as Delivery, but for a message's
// outcome POSTed to its callback URL, so that neither ever verifies as
// the other.
func Callback(timestamp string, h http.Header, body []byte) (string, error) {
	return call("mailbox-callback-v1\n", timestamp, h, body)
}

func call(first, timestamp string, h http.Header, body []byte) (string, error) {
	var b strings.Builder
	b.WriteString(first)
	if strings.ContainsAny(timestamp, "\r\n") {
		return "", ErrMalformed
	}
	b.WriteString(timestamp)
	b.WriteByte('\n')
	return finish(&b, h, DeliveryHeaders, body)
}

func finish(b *strings.Builder, h http.Header, names []string, body []byte) (string, error) {
	for _, name := range names {
		for _, v := range h.Values(name) {
			v = strings.Trim(v, " \t")
			if strings.ContainsAny(v, "\r\n") {
				return "", ErrMalformed
			}
			b.WriteString(strings.ToLower(name))
			b.WriteByte(':')
			b.WriteString(v)
			b.WriteByte('\n')
		}
	}
	sum := sha256.Sum256(body)
	b.WriteString(hex.EncodeToString(sum[:]))
	return b.String(), nil
}

// Sign returns the signature value of canonical under key: "v1=" and the
// hex HMAC-SHA256.
func Sign(key []byte, canonical string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(canonical))
	return version + hex.EncodeToString(m.Sum(nil))
}

// Equal reports whether value is the signature of canonical under key, in
// constant time.
func Equal(key []byte, canonical, value string) bool {
	got, ok := strings.CutPrefix(strings.TrimSpace(value), version)
	if !ok {
		return false
	}
	sig, err := hex.DecodeString(got)
	if err != nil {
		return false
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(canonical))
	return hmac.Equal(sig, m.Sum(nil))
}

// WellFormed reports whether value has a signature's form: "v1=" and the
// hex of an HMAC-SHA256, as Sign makes it and Equal reads it. It says
// nothing about whether it is right.
func WellFormed(value string) bool {
	got, ok := strings.CutPrefix(strings.TrimSpace(value), version)
	if !ok || len(got) != 2*sha256.Size {
		return false
	}
	_, err := hex.DecodeString(got)
	return err == nil
}

// Timestamp is the X-Mailbox-Timestamp value of t.
func Timestamp(t time.Time) string { return strconv.FormatInt(t.Unix(), 10) }

// CheckTime returns nil when ts, an X-Mailbox-Timestamp value, is within
// window of now; else an error saying why, without the value.
func CheckTime(ts string, now time.Time, window time.Duration) error {
	if ts == "" {
		return errors.New("missing")
	}
	if len(ts) > 19 || strings.TrimLeft(ts, "0123456789") != "" {
		return errors.New("not unix seconds")
	}
	n, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return errors.New("not unix seconds")
	}
	// Both are far from overflowing: n has at most 19 digits and is
	// positive, now is today.
	diff, w := now.Unix()-n, int64(window/time.Second)
	if diff > w || diff < -w {
		return fmt.Errorf("more than %s from the mailbox's clock", window)
	}
	return nil
}
