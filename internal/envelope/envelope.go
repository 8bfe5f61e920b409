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
	"time"
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
)

// Envelope is one message waiting for delivery or kept as a dead letter.
type Envelope struct {
	// ID is stable across retries so functions can de-duplicate.
	ID string `json:"id"`
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
	// MaxRetries is the last value of Retries that is still delivered.
	MaxRetries int `json:"max_retries"`
	// Delay is the wait between attempts.
	Delay time.Duration `json:"delay"`

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

	// Reason and DeadAt are set once the message is a dead letter.
	Reason string    `json:"reason,omitempty"`
	DeadAt time.Time `json:"dead_at,omitzero"`
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
	e.Body = data[end:]
	return &e, nil
}
