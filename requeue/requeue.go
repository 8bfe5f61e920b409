// Package requeue asks the OpenFaaS mailbox to call a function again later
// with the request it is handling, for example when a rate-limited API
// answered 429. It counts the attempt (X-Retries plus one), carries
// X-Max-Retries, X-Delay-Duration and X-Mailbox-Message-Id over from the
// request when the mailbox signed it, keeps its Content-Type, and tells
// the caller plainly what the mailbox did: scheduled the message (Result
// with its id and due time), kept it as a dead letter because its retries
// are spent (ErrMaxRetries), or refused it (*Error with the mailbox's
// message).
//
// # Behind the public gateway
//
// A function the gateway exposes can be called by anyone, with any
// headers. With a token (auth_token_secret) the mailbox signs every call
// it makes (X-Mailbox-Delivery-Signature); Verify checks that signature
// with the same token, and only a verified delivery's control headers are
// carried over (FromDelivery; Request does it by itself with WithToken).
// A request that does not verify is requeued with the function's own
// options and a new id: a caller cannot raise its retries, reuse another
// message's id or turn its dead-letter routing off. Only its X-Retries
// still counts up, which can only end the caller's own message sooner. WithToken
// also signs the requeue (SignRequest) instead of sending the token, so
// the signature is good for that one request only. TrustIncoming keeps
// the old behaviour, for a mailbox without a token whose functions only
// the mailbox can call.
//
// The package uses only the standard library (and the module's own
// internal/signature and internal/names, themselves standard library
// only), so any Go function can import it whatever its template.
//
// A function should answer 2xx once the mailbox has the message, scheduled
// or dead-lettered: when the mailbox delivered the request being handled, a
// non-2xx answer counts as a failed attempt and the mailbox would schedule
// that delivery again as well.
package requeue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/openfaas/mailbox/internal/names"
)

// Status values of a Result.
const (
	StatusScheduled    = "scheduled"
	StatusDeadLettered = "dead-lettered"
	// StatusRepeat: the same message (function, id and X-Retries) was
	// already waiting; nothing more was stored (JetStream).
	StatusRepeat = "repeat"
)

// ReasonMaxRetries is the dead-letter reason of a requeue whose X-Retries
// is above its X-Max-Retries.
const ReasonMaxRetries = "max-retries"

// ErrMaxRetries is returned, wrapped and with the Result, when the
// mailbox did not schedule the message because its retries are spent: it
// stored it as a dead letter with reason max-retries, and will not call
// the function with it again.
var ErrMaxRetries = errors.New("requeue: retries spent, the mailbox kept the message as a dead letter")

// Result is the mailbox's answer to a requeue it stored.
type Result struct {
	// Status is StatusScheduled, StatusDeadLettered or StatusRepeat.
	Status string `json:"status"`
	// Repeat is set with StatusRepeat.
	Repeat bool `json:"repeat,omitempty"`
	// ID is the message id; deliveries carry it as X-Mailbox-Message-Id.
	ID string `json:"id"`
	// Function is the function the mailbox will call.
	Function string `json:"function"`
	// Retries is the X-Retries the mailbox stored, and MaxRetries the
	// X-Max-Retries.
	Retries    int `json:"retries"`
	MaxRetries int `json:"max_retries"`
	// DueAt is when the mailbox will call the function; zero when the
	// message was dead-lettered.
	DueAt time.Time `json:"due_at"`
	// Reason is why the message was dead-lettered (ReasonMaxRetries);
	// empty when scheduled.
	Reason string `json:"reason"`
}

// Error is a requeue the mailbox refused (an answer of 400 or above), so
// the message was not stored. 400 and 413 mean the request must change;
// 503 means the mailbox could not reach NATS, and the same request may
// succeed after RetryAfter.
type Error struct {
	// StatusCode is the HTTP status the mailbox (or the gateway in front
	// of it) answered.
	StatusCode int
	// Message is the mailbox's "error" field, or the start of the answer
	// when it was not the mailbox's JSON (a gateway's 404 or 502, say).
	Message string
	// Field is the header the mailbox named, if any (X-Max-Retries, say),
	// or "path" for the function name in the path.
	Field string
	// RetryAfter is the answer's Retry-After in seconds, 0 if none.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	msg := e.Message
	if msg == "" {
		msg = "(no message)"
	}
	return fmt.Sprintf("requeue: mailbox answered %d %s: %s", e.StatusCode, http.StatusText(e.StatusCode), msg)
}

// maxAnswerBytes bounds how much of an answer is read: the mailbox's are
// a few hundred bytes.
const maxAnswerBytes = 64 << 10

// Request asks the mailbox at mailboxURL to call function again with body,
// after the delay, as a retry of r: the request the function is handling.
// Header describes the control headers it sends.
//
// mailboxURL is where the requeue API is served, without /deadletter:
// "http://gateway.openfaas:8080/function/mailbox" through the gateway,
// "http://127.0.0.1:8090" for `mailbox serve`. function is "name" or
// "name.namespace". c nil means http.DefaultClient; bound the call with
// ctx or the client's Timeout.
//
// The outcomes:
//   - scheduled (202), or a repeat of a message still waiting (200,
//     StatusRepeat): the Result and nil
//   - dead-lettered because the retries are spent (200): the Result and
//     an error wrapping ErrMaxRetries
//   - refused (400 or above): a *Error
//   - anything else (no answer, an answer that is not the mailbox's): an
//     error saying what was received
func Request(ctx context.Context, c *http.Client, mailboxURL, function string, r *http.Request, body []byte, opts ...Option) (Result, error) {
	if r == nil {
		return Result{}, errors.New("requeue: no request to requeue")
	}
	target, err := endpoint(mailboxURL, function)
	if err != nil {
		return Result{}, err
	}
	var o options
	for _, opt := range opts {
		if opt != nil {
			if err := opt(&o); err != nil {
				return Result{}, err
			}
		}
	}
	if o.token != "" && o.delivery == nil && !o.trust {
		// The request being handled carries its control headers over
		// only when the mailbox signed it (X-Retries aside, see Header).
		// And only to the function it was made for: a delivery replayed
		// to another function that requeues itself must not give it its
		// id and limits. A routed dead letter may go back where it came
		// from, still marked, so that it is not routed again.
		if d, err := Verify(r, body, o.token); err == nil &&
			(sameFunction(d.Function, function) || (d.header.Get("X-Dead-Letter-From") != "" && sameFunction(d.header.Get("X-Dead-Letter-From"), function))) {
			opts = append(opts[:len(opts):len(opts)], FromDelivery(d))
		}
	}
	h, err := Header(r.Header, opts...)
	if err != nil {
		return Result{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return Result{}, fmt.Errorf("requeue: %w", err)
	}
	req.Header = h
	if o.token != "" {
		if err := SignRequest(req, body, o.token); err != nil {
			return Result{}, err
		}
	}
	if c == nil {
		c = http.DefaultClient
	}
	res, err := c.Do(req)
	if err != nil {
		return Result{}, fmt.Errorf("requeue: POST %s: %w", target, err)
	}
	defer res.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(res.Body, maxAnswerBytes))
	if err != nil {
		return Result{}, fmt.Errorf("requeue: reading the mailbox's answer (%d): %w", res.StatusCode, err)
	}
	return interpret(res, answer)
}

// interpret turns the mailbox's answer into Request's outcome.
func interpret(res *http.Response, answer []byte) (Result, error) {
	if res.StatusCode >= 400 {
		return Result{}, refusal(res, answer)
	}
	var out Result
	if res.StatusCode != http.StatusAccepted && res.StatusCode != http.StatusOK {
		return out, fmt.Errorf("requeue: unexpected answer %d from the mailbox: %s", res.StatusCode, excerpt(answer))
	}
	if err := json.Unmarshal(answer, &out); err != nil {
		return Result{}, fmt.Errorf("requeue: answer %d is not the mailbox's JSON: %s", res.StatusCode, excerpt(answer))
	}
	switch {
	case res.StatusCode == http.StatusAccepted && out.Status == StatusScheduled,
		res.StatusCode == http.StatusOK && out.Status == StatusRepeat:
		return out, nil
	case res.StatusCode == http.StatusOK && out.Status == StatusDeadLettered && out.Reason == ReasonMaxRetries:
		return out, fmt.Errorf("%w: message %s to %s had X-Retries %d, above X-Max-Retries %d",
			ErrMaxRetries, out.ID, out.Function, out.Retries, out.MaxRetries)
	case res.StatusCode == http.StatusOK && out.Status == StatusDeadLettered:
		return out, fmt.Errorf("requeue: the mailbox kept message %s as a dead letter with reason %q", out.ID, out.Reason)
	default:
		return out, fmt.Errorf("requeue: unexpected answer %d with status %q from the mailbox", res.StatusCode, out.Status)
	}
}

// refusal is the *Error for an answer of 400 or above.
func refusal(res *http.Response, answer []byte) *Error {
	e := &Error{StatusCode: res.StatusCode}
	var body struct {
		Error string `json:"error"`
		Field string `json:"field"`
	}
	if json.Unmarshal(answer, &body) == nil && body.Error != "" {
		e.Message, e.Field = body.Error, body.Field
	} else {
		e.Message = clip(answer)
	}
	e.RetryAfter = RetryAfter(res.Header.Get("Retry-After"), time.Now())
	return e
}

// RetryAfter reads a Retry-After value (RFC 9110): whole seconds or an
// HTTP date. Anything else, or a time already past, is 0. A function whose
// API answered 429 can pass it on with WithDelay.
func RetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n <= 0 {
			return 0
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now).Round(time.Second)
	}
	return 0
}

// endpoint returns mailboxURL/deadletter/function. The function name is
// checked only for characters that would change the path; the mailbox
// checks the rest and answers 400.
func endpoint(mailboxURL, function string) (string, error) {
	u, err := url.Parse(mailboxURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("requeue: mailbox URL %q is not an http:// or https:// URL", mailboxURL)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("requeue: mailbox URL %q has a query or fragment", mailboxURL)
	}
	if function == "" || strings.ContainsFunc(function, notNameRune) {
		return "", fmt.Errorf("requeue: function %q must be name or name.namespace: lowercase letters, digits and '-'", function)
	}
	return strings.TrimSuffix(u.String(), "/") + "/deadletter/" + function, nil
}

// notNameRune reports a rune that cannot be part of a function name or
// namespace.
func notNameRune(r rune) bool {
	return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.')
}

// maxExcerpt bounds how much of an unexpected answer an error repeats.
const maxExcerpt = 256

// clip returns the start of an answer, trimmed, for an error message.
func clip(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > maxExcerpt {
		return s[:maxExcerpt] + "..."
	}
	return s
}

// excerpt is clip, quoted.
func excerpt(b []byte) string { return strconv.Quote(clip(b)) }

// sameFunction reports whether a and b name one function, as the mailbox
// counts them: a name without a namespace is in the default one.
func sameFunction(a, b string) bool {
	return names.Qualify(a, names.DefaultNamespace) == names.Qualify(b, names.DefaultNamespace)
}
