// Package status is where a message is: waiting, in flight, delivered or
// dead-lettered. The API and the connector record a Status at each step
// (through a Recorder, in the background: a status is a hint, never part
// of a delivery), a queue backend keeps the latest one per message id for
// a while, and GET /messages/<id> reads it back.
package status

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
)

// States of a message.
const (
	// Waiting: stored, due at DueAt.
	Waiting = "waiting"
	// InFlight: a connector is calling the function (or the callback URL)
	// now.
	InFlight = "in-flight"
	// Delivered: the function accepted the message. Final.
	Delivered = "delivered"
	// DeadLettered: kept as a dead letter; Reason says why. Final.
	DeadLettered = "dead-lettered"
)

// Status is one step of a message's life. Its JSON form is what backends
// store.
type Status struct {
	// ID is the message id; a routed dead letter has <id>-dl, a callback
	// <id>-cb.
	ID       string `json:"id"`
	Function string `json:"function"`
	// Kind is the envelope's: empty for a message, dead-letter or callback.
	Kind  string `json:"kind,omitempty"`
	State string `json:"status"`
	// DueAt is when a waiting message is due.
	DueAt time.Time `json:"due_at,omitzero"`
	// Retries are the attempts made before this step (X-Retries).
	Retries int `json:"retries"`
	// Holds counts the times the message was put back without an attempt
	// (a limit, a function not deployed yet).
	Holds int `json:"holds,omitempty"`
	// Bytes is the size of the body of a message waiting or in flight,
	// which the quotas on waiting messages count.
	Bytes int64 `json:"bytes,omitempty"`
	// Reason is a dead letter's.
	Reason string `json:"reason,omitempty"`
	// LastStatus is the HTTP status of the last call: the 2xx of a
	// delivery, the last failure's otherwise (0 when none or no answer).
	LastStatus int `json:"last_status,omitempty"`
	// Route is the id of the dead letter routed to a dead-letter function;
	// Callback the id of the callback to the message's callback URL.
	Route    string `json:"route,omitempty"`
	Callback string `json:"callback,omitempty"`
	// AcceptedAt is when the API accepted this life of the message: a
	// message requeued again under the same id starts a new life.
	AcceptedAt time.Time `json:"accepted_at"`
	// UpdatedAt is when this step was recorded.
	UpdatedAt time.Time `json:"updated_at"`
	// ExpiresAt is set by the backend that stores the status: past it the
	// status is forgotten.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// Final reports whether s is the end of the message's life.
func (s Status) Final() bool { return s.State == Delivered || s.State == DeadLettered }

// Expiry is when s is forgotten with retention: retention after it was
// recorded, and for a waiting message no earlier than retention after it
// is due, so a long wait is not forgotten while it waits.
func (s Status) Expiry(retention time.Duration) time.Time {
	end := s.UpdatedAt
	if s.State == Waiting && s.DueAt.After(end) {
		end = s.DueAt
	}
	return end.Add(retention)
}

// Expired reports whether s, as stored, is past its ExpiresAt at now.
func (s Status) Expired(now time.Time) bool {
	return !s.ExpiresAt.IsZero() && !now.Before(s.ExpiresAt)
}

// Supersedes reports whether s may replace old, the status stored for the
// same id. Statuses are recorded in the background by several processes,
// so they can arrive out of order; a message's life only moves forward:
// a later life (AcceptedAt), then more attempts (Retries), then more holds
// (Holds), then waiting < in flight < final. An equal step replaces the
// old one (a delivery made again after a connector crash). An expired old
// status never blocks a new one.
func (s Status) Supersedes(old Status, now time.Time) bool {
	if old.Expired(now) {
		return true
	}
	if c := s.AcceptedAt.Compare(old.AcceptedAt); c != 0 {
		return c > 0
	}
	if s.Retries != old.Retries {
		return s.Retries > old.Retries
	}
	if s.Holds != old.Holds {
		return s.Holds > old.Holds
	}
	return s.phase() >= old.phase()
}

func (s Status) phase() int {
	switch s.State {
	case Waiting:
		return 0
	case InFlight:
		return 1
	default:
		return 2
	}
}

// ErrFormat means stored bytes are not a status.
var ErrFormat = errors.New("status: bad format")

// Encode returns s as stored.
func Encode(s Status) ([]byte, error) { return json.Marshal(s) }

// Decode reads a stored status.
func Decode(data []byte) (Status, error) {
	var s Status
	if err := json.Unmarshal(data, &s); err != nil {
		return Status{}, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if s.ID == "" || s.State == "" {
		return Status{}, fmt.Errorf("%w: no id or status", ErrFormat)
	}
	return s, nil
}

// Of is the status of e in state at now: its id, function, kind, attempts,
// holds and life (AcceptedAt); the due time of a waiting message, the
// reason of a dead letter and the HTTP status of its last failed call.
func Of(e *envelope.Envelope, state string, now time.Time) Status {
	s := Status{
		ID:         e.ID,
		Function:   e.Function,
		Kind:       e.Kind,
		State:      state,
		Retries:    e.Retries,
		Holds:      e.Holds,
		LastStatus: e.LastStatus,
		AcceptedAt: e.AcceptedAt.UTC(),
		UpdatedAt:  now.UTC(),
	}
	if !s.Final() {
		s.Bytes = int64(len(e.Body))
	}
	switch state {
	case Waiting:
		s.DueAt = e.DueAt.UTC()
	case DeadLettered:
		s.Reason = e.Reason
	}
	return s
}
