// Package envelope defines the message the mailbox stores on the queue:
// the original request (body and kept headers) plus the retry state that
// the connector needs to deliver it or turn it into a dead letter.
//
// The wire format is versioned and binary-safe: a version byte, the
// length-prefixed JSON metadata, then the raw body. Keeping the body out of
// the JSON avoids base64's 33% growth: a body costs its own size, so the
// largest body a broker takes is its max payload less the metadata.
package envelope

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
	"time"

	"github.com/openfaas/mailbox/internal/signature"
)

// The mailbox's control headers. A requeue sets them; the connector writes
// them back on every delivery from the envelope's fields, so they are never
// kept among the stored request headers.
const (
	HeaderRetries    = "X-Retries"
	HeaderMaxRetries = "X-Max-Retries"
	HeaderDelay      = "X-Delay-Duration"
	// HeaderMessageID is stable across retries so functions can
	// de-duplicate, and a function requeuing a message carries it over.
	HeaderMessageID = "X-Mailbox-Message-Id"
)

// Version is the wire format written by Encode.
const Version = 1

// Reasons a message becomes a dead letter.
const (
	// ReasonMaxRetries: the message was attempted X-Max-Retries+1 times, or
	// was requeued with X-Retries already above X-Max-Retries.
	ReasonMaxRetries = "max-retries"
	// ReasonMalformed: the stored bytes could not be decoded; the raw bytes
	// are kept as the dead letter's body.
	ReasonMalformed = "malformed"
	// ReasonRejected: the function answered a status that is not worth
	// another attempt (a 4xx other than 408 and 429, by default).
	ReasonRejected = "rejected"
	// ReasonExpired: the message's TTL ran out before a delivery
	// succeeded, or before the next attempt would be due.
	ReasonExpired = "expired"
	// ReasonNoSuchFunction: the gateway did not know the function for
	// longer than the grace period.
	ReasonNoSuchFunction = "no-such-function"
	// ReasonRefused: the connector refused to deliver the message at all:
	// its function is not one the mailbox may target (allow_functions,
	// allow_namespaces, mailbox_function) or its callback URL is not one
	// it may call. The API refuses such requeues; a message that reaches
	// the connector anyway was put on NATS some other way, or stored
	// under other settings. No call is made.
	ReasonRefused = "refused"
)

// Reasons are every reason a dead letter may have.
var Reasons = []string{ReasonMaxRetries, ReasonRejected, ReasonExpired, ReasonNoSuchFunction, ReasonRefused, ReasonMalformed}

// Kinds of message.
const (
	// KindMessage is a message for a function (the empty string, so that
	// messages stored before kinds existed are messages).
	KindMessage = ""
	// KindDeadLetter is a dead letter routed to a dead-letter function. It
	// is never routed again: its own dead letter is only stored.
	KindDeadLetter = "dead-letter"
	// KindCallback is a message's outcome on its way to its callback URL.
	KindCallback = "callback"
)

// Headers the mailbox adds to what it delivers.
const (
	HeaderBackoff            = "X-Backoff"
	HeaderMaxDelay           = "X-Max-Delay"
	HeaderTTL                = "X-Message-TTL"
	HeaderDeadLetterFunction = "X-Dead-Letter-Function"
	HeaderCallbackURL        = "X-Callback-Url"
	// On a routed dead letter.
	HeaderDeadLetterReason  = "X-Dead-Letter-Reason"
	HeaderDeadLetterFrom    = "X-Dead-Letter-From"
	HeaderDeadLetterTime    = "X-Dead-Letter-Time"
	HeaderDeadLetterRetries = "X-Dead-Letter-Retries"
	// On a callback.
	HeaderOutcome        = "X-Mailbox-Outcome"
	HeaderFunctionStatus = "X-Function-Status"
	HeaderFunctionName   = "X-Function-Name"
	HeaderCallID         = "X-Call-Id"
	HeaderAttempts       = "X-Mailbox-Attempts"
)

// MailboxHeaders are every header whose value is the mailbox's word: the
// control headers it reads on a requeue, those it sets on what it
// delivers (a routed dead letter's X-Dead-Letter-*, a callback's outcome,
// function, status and attempts) and its signatures'. A delivery's
// signature covers them (signature.DeliveryHeaders), so a caller's value
// of one is never stored among a message's headers (StripHeader, at
// requeue) nor passed on from stored headers (again before each call).
// X-Call-Id is not one: it is not signed, and a message keeps its
// original call's id for tracing.
var MailboxHeaders = append([]string{
	HeaderRetries, HeaderMaxRetries, HeaderDelay, HeaderMessageID, HeaderBackoff, HeaderMaxDelay, HeaderTTL,
	HeaderDeadLetterFunction, HeaderCallbackURL,
	HeaderOutcome, HeaderFunctionStatus, HeaderFunctionName, HeaderAttempts,
	signature.HeaderRequest, signature.HeaderDelivery, signature.HeaderTimestamp, signature.HeaderFunction,
}, DeadLetterHeaders...)

// DeadLetterHeaders tell a routed dead letter's story. Of MailboxHeaders,
// only they are kept, and only on a dead letter (KindDeadLetter): the
// mailbox routing it set them, or a dead-letter function requeuing it
// sent them under its signature.
var DeadLetterHeaders = []string{HeaderDeadLetterReason, HeaderDeadLetterFrom, HeaderDeadLetterTime, HeaderDeadLetterRetries}

// hopByHop describe one connection, not the message (RFC 9110 section
// 7.6.1); Proxy-Connection is the non-standard alias some clients still
// send. Host and Content-Length are set by the transport for each request.
var hopByHop = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Content-Length",
}

// StripHeader returns a copy of h without the headers a message must
// not carry to its function: hop-by-hop ones (with those Connection
// names), those of the transport, and MailboxHeaders, but for a dead
// letter (deadLetter) its DeadLetterHeaders. Names are compared in
// canonical form, so a stored "x-mailbox-outcome" goes too. It returns
// nil when nothing is left.
func StripHeader(h http.Header, deadLetter bool) http.Header {
	drop := map[string]bool{}
	for _, name := range slices.Concat(hopByHop, MailboxHeaders) {
		drop[textproto.CanonicalMIMEHeaderKey(name)] = true
	}
	if deadLetter {
		for _, name := range DeadLetterHeaders {
			delete(drop, textproto.CanonicalMIMEHeaderKey(name))
		}
	}
	for key, vs := range h {
		if textproto.CanonicalMIMEHeaderKey(key) != "Connection" {
			continue
		}
		// Connection may name further per-connection headers.
		for _, v := range vs {
			for _, name := range strings.Split(v, ",") {
				if name = strings.TrimSpace(name); name != "" {
					drop[textproto.CanonicalMIMEHeaderKey(name)] = true
				}
			}
		}
	}
	var out http.Header
	for key, vs := range h {
		if drop[textproto.CanonicalMIMEHeaderKey(key)] {
			continue
		}
		if out == nil {
			out = http.Header{}
		}
		out[key] = slices.Clone(vs)
	}
	return out
}

// Outcomes a callback reports.
const (
	OutcomeDelivered    = "delivered"
	OutcomeDeadLettered = "dead-lettered"
)

// Envelope is one message waiting for delivery or kept as a dead letter.
type Envelope struct {
	// ID is stable across retries so functions can de-duplicate.
	ID string `json:"id"`
	// Kind is KindMessage, KindDeadLetter or KindCallback.
	Kind string `json:"kind,omitempty"`
	// Function is the target, "name" or "name.namespace".
	Function string `json:"function"`
	// Header holds the kept request headers (no hop-by-hop, no credentials
	// unless configured).
	Header http.Header `json:"header,omitempty"`
	// Body is the original request body, stored verbatim.
	Body []byte `json:"-"`

	// Retries is the number of attempts already made; the next delivery
	// carries it as X-Retries.
	Retries int `json:"retries"`
	// Policy is what the message asked for with its headers. What it
	// leaves unset comes from the function's annotations, then the
	// mailbox's defaults, when the connector decides (delivery.Resolve).
	Policy

	// AcceptedAt is when the mailbox accepted the message.
	AcceptedAt time.Time `json:"accepted_at"`
	// DueAt is when the next delivery is due.
	DueAt time.Time `json:"due_at"`

	// Attempt history, kept for dead letters and, later, replay.
	FirstAttemptAt time.Time `json:"first_attempt_at,omitzero"`
	LastAttemptAt  time.Time `json:"last_attempt_at,omitzero"`
	LastStatus     int       `json:"last_status,omitempty"`
	LastError      string    `json:"last_error,omitempty"`
	// LastResponse is the start of the function's last response body.
	LastResponse string `json:"last_response,omitempty"`

	// MissingSince is when the gateway first did not know the function,
	// for the no-such-function grace period; zero while it does.
	MissingSince time.Time `json:"missing_since,omitzero"`
	// SlotAt is a rate-limit slot reserved for the message's next call.
	SlotAt time.Time `json:"slot_at,omitzero"`
	// Holds counts the times the message was put back without an attempt
	// (its function unknown to the gateway, or held by a rate or
	// concurrency limit), which keeps Retries: with ID and Retries it
	// tells each store apart for a backend that de-duplicates on them.
	Holds int `json:"holds,omitempty"`
	// Reason and DeadAt are set once the message is a dead letter.
	Reason string    `json:"reason,omitempty"`
	DeadAt time.Time `json:"dead_at,omitzero"`

	// Replays counts the times the message was replayed from the dead
	// letters; Deaths are its earlier lives' ends, oldest first, at most
	// MaxDeaths of them (RabbitMQ's x-death record).
	Replays int     `json:"replays,omitempty"`
	Deaths  []Death `json:"deaths,omitempty"`
}

// MaxDeaths bounds Envelope.Deaths: a message replayed over and over
// keeps its most recent deaths, not an ever longer record.
const MaxDeaths = 10

// Death is how one of a message's earlier lives ended.
type Death struct {
	Reason     string    `json:"reason"`
	DeadAt     time.Time `json:"dead_at"`
	Retries    int       `json:"retries"`
	LastStatus int       `json:"last_status,omitempty"`
	LastError  string    `json:"last_error,omitempty"`
}

// Backoff values.
const (
	BackoffFixed       = "fixed"
	BackoffExponential = "exponential"
)

// Policy is a message's delivery settings as far as they are set: a nil
// pointer or an empty string is unset. Messages stored before Policy had
// pointers always carry max_retries and delay, so they read as set.
type Policy struct {
	// MaxRetries is the last value of Retries that is still delivered.
	MaxRetries *int `json:"max_retries,omitempty"`
	// Delay is the wait before a retry (the first one, for exponential
	// backoff).
	Delay *time.Duration `json:"delay,omitempty"`
	// Backoff is BackoffFixed or BackoffExponential.
	Backoff string `json:"backoff,omitempty"`
	// MaxDelay bounds exponential backoff and a function's Retry-After.
	MaxDelay *time.Duration `json:"max_delay,omitempty"`
	// TTL is how long after AcceptedAt the message may still be delivered.
	TTL *time.Duration `json:"ttl,omitempty"`
	// DeadLetterFunction is invoked with the message when it becomes a
	// dead letter.
	DeadLetterFunction string `json:"dead_letter_function,omitempty"`
	// CallbackURL receives the message's final outcome.
	CallbackURL string `json:"callback_url,omitempty"`
}

// ErrFormat reports bytes that are not an envelope this version can read.
var ErrFormat = errors.New("envelope: bad format")

// Encode returns the wire form of e.
func Encode(e *Envelope) ([]byte, error) {
	meta, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("envelope: encode: %w", err)
	}
	out := make([]byte, 0, 1+binary.MaxVarintLen64+len(meta)+len(e.Body))
	out = append(out, Version)
	out = binary.AppendUvarint(out, uint64(len(meta)))
	out = append(out, meta...)
	return append(out, e.Body...), nil
}

// Decode parses the wire form written by Encode. The returned envelope's
// Body aliases data.
func Decode(data []byte) (*Envelope, error) {
	if len(data) == 0 || data[0] != Version {
		return nil, fmt.Errorf("%w: unknown version", ErrFormat)
	}
	n, size := binary.Uvarint(data[1:])
	if size <= 0 || n > uint64(len(data)-1-size) {
		return nil, fmt.Errorf("%w: bad metadata length", ErrFormat)
	}
	start := 1 + size
	end := start + int(n)
	var e Envelope
	if err := json.Unmarshal(data[start:end], &e); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if err := e.check(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	e.Body = data[end:]
	return &e, nil
}

// check refuses values no mailbox writes. Whatever is on NATS may have
// been put there by anyone who can publish: an impossible value (a
// negative count once made the connector panic) makes the envelope
// malformed, kept as a dead letter rather than acted on.
func (e *Envelope) check() error {
	switch e.Kind {
	case KindMessage, KindDeadLetter, KindCallback:
	default:
		return fmt.Errorf("unknown kind %q", e.Kind)
	}
	switch e.Backoff {
	case "", BackoffFixed, BackoffExponential:
	default:
		return fmt.Errorf("unknown backoff %q", e.Backoff)
	}
	if e.Reason != "" && !slices.Contains(Reasons, e.Reason) {
		return fmt.Errorf("unknown reason %q", e.Reason)
	}
	for _, c := range []struct {
		name string
		n    int
	}{{"retries", e.Retries}, {"holds", e.Holds}, {"replays", e.Replays}, {"last_status", e.LastStatus}} {
		if c.n < 0 {
			return fmt.Errorf("%s is negative", c.name)
		}
	}
	if e.MaxRetries != nil && *e.MaxRetries < 0 {
		return errors.New("max_retries is negative")
	}
	for _, d := range []struct {
		name string
		d    *time.Duration
	}{{"delay", e.Delay}, {"max_delay", e.MaxDelay}, {"ttl", e.TTL}} {
		if d.d != nil && *d.d < 0 {
			return fmt.Errorf("%s is negative", d.name)
		}
	}
	times := []*time.Time{&e.AcceptedAt, &e.DueAt, &e.FirstAttemptAt, &e.LastAttemptAt, &e.MissingSince, &e.SlotAt, &e.DeadAt}
	for i := range e.Deaths {
		d := &e.Deaths[i]
		if d.Retries < 0 || d.LastStatus < 0 {
			return errors.New("a death's retries or last_status is negative")
		}
		times = append(times, &d.DeadAt)
	}
	// A time JSON reads but cannot write (an offset of +24:00, a year
	// past 9999 once in UTC) would make every later store of the message
	// fail: times are kept in UTC, and must be writable.
	for _, t := range times {
		*t = t.UTC()
		if y := t.Year(); y < 0 || y > 9999 {
			return fmt.Errorf("a time in year %d", y)
		}
	}
	return nil
}
