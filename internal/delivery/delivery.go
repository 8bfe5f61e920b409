// Package delivery decides a message's fate. It is pure: it takes the stored
// envelope, the outcome of one invocation and the time, and returns what to do
// next. The connector and the requeue API act on its decisions; neither
// decides on its own, so the retry rules live in this file only.
package delivery

import (
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/openfaas/mailbox/internal/envelope"
)

// ResponseLimit is the most of a failed invocation's response body kept in
// Envelope.LastResponse. Dead letters are stored on the broker next to the
// original body, so the response is a hint for the operator, not a copy.
const ResponseLimit = 1024

// Action is what the caller must do with a message.
type Action int

const (
	// Ack: the function accepted the message; remove it from the queue.
	Ack Action = iota
	// Retry: store Decision.Next on the queue, due at Next.DueAt.
	Retry
	// DeadLetter: store Decision.Next as a dead letter; Next.Reason says why.
	DeadLetter
)

// String returns the action's name, as used in logs and metric labels.
func (a Action) String() string {
	switch a {
	case Ack:
		return "ack"
	case Retry:
		return "retry"
	case DeadLetter:
		return "dead-letter"
	default:
		return fmt.Sprintf("Action(%d)", int(a))
	}
}

// Result is the outcome of one invocation of a function.
type Result struct {
	// Status is the HTTP status the gateway returned; 0 when Err is set.
	Status int
	// Err is set when no response arrived: a network error, a timeout or a
	// cancelled context.
	Err error
	// Body is the start of the response body. Only the first ResponseLimit
	// bytes are kept, so invokers need not read more than ResponseLimit+1
	// (the extra byte shows whether the cut splits a character).
	Body []byte
}

// Decision is what to do with a message, and the envelope to store.
type Decision struct {
	Action Action
	// Next is the envelope to store for Retry and DeadLetter: a copy of the
	// input with the decision recorded. It is nil for Ack. Header and Body
	// are shared with the input, so neither may be modified.
	Next *envelope.Envelope
}

// Decide turns the result of delivering e at now into a decision:
//
//	Result                        | Retries+1 vs MaxRetries | Action     | Next
//	------------------------------+-------------------------+------------+------------------------------------------
//	Err == nil, Status 200-299    | any                     | Ack        | nil
//	Err != nil, or other Status   | Retries+1 <= MaxRetries | Retry      | attempt recorded, Retries+1, DueAt = now+Delay
//	Err != nil, or other Status   | Retries+1 >  MaxRetries | DeadLetter | attempt recorded, Reason max-retries, DeadAt = now
//
// "Attempt recorded" sets FirstAttemptAt (if still zero) and LastAttemptAt to
// now, LastStatus to r.Status, LastError to r.Err's text (or "") and
// LastResponse to r.Body cut to ResponseLimit bytes at a UTF-8 boundary.
//
// Retries counts attempts already made, so X-Retries 0 with X-Max-Retries 3
// delivers with X-Retries 0, 1, 2 and 3 (four calls) before the dead letter.
// A dead letter keeps the Retries and DueAt of its final attempt, so Retries,
// LastStatus and LastError describe the same call.
//
// e is never modified.
func Decide(e *envelope.Envelope, r Result, now time.Time) Decision {
	if r.Err == nil && r.Status >= 200 && r.Status <= 299 {
		return Decision{Action: Ack}
	}

	next := *e
	if next.FirstAttemptAt.IsZero() {
		next.FirstAttemptAt = now
	}
	next.LastAttemptAt = now
	next.LastStatus = r.Status
	next.LastError = ""
	if r.Err != nil {
		next.LastError = r.Err.Error()
	}
	next.LastResponse = truncate(r.Body, ResponseLimit)

	if exhausted(e.Retries+1, e.MaxRetries) {
		return deadLetter(&next, now)
	}
	next.Retries = e.Retries + 1
	next.DueAt = now.Add(e.Delay)
	return Decision{Action: Retry, Next: &next}
}

// Admit decides whether a message arriving through the requeue API is
// scheduled at all:
//
//	Retries vs MaxRetries   | Action     | Next
//	------------------------+------------+------------------------------------
//	Retries <= MaxRetries   | Retry      | DueAt = now+Delay
//	Retries >  MaxRetries   | DeadLetter | Reason max-retries, DeadAt = now
//
// The function asking for the requeue has already made Retries attempts
// itself, so the first delivery by the mailbox is a retry and waits Delay,
// like every later one. e is never modified.
func Admit(e *envelope.Envelope, now time.Time) Decision {
	next := *e
	if exhausted(e.Retries, e.MaxRetries) {
		return deadLetter(&next, now)
	}
	next.DueAt = now.Add(e.Delay)
	return Decision{Action: Retry, Next: &next}
}

// exhausted is the one retry limit: a message is never delivered with
// X-Retries above X-Max-Retries. Decide asks it about the next attempt,
// Admit about the first.
func exhausted(retries, maxRetries int) bool {
	return retries > maxRetries
}

func deadLetter(next *envelope.Envelope, now time.Time) Decision {
	next.Reason = envelope.ReasonMaxRetries
	next.DeadAt = now
	return Decision{Action: DeadLetter, Next: next}
}

// truncate returns at most limit bytes of b as a string, cut before a
// character rather than inside one, so the JSON metadata does not turn the
// last character into U+FFFD. Bytes that are not UTF-8 are kept as they are;
// the backoff is bounded so binary data cannot shorten the cut by more than a
// character's length.
func truncate(b []byte, limit int) string {
	if len(b) <= limit {
		return string(b)
	}
	cut := limit
	for i := 0; i < utf8.UTFMax-1 && cut > 0 && !utf8.RuneStart(b[cut]); i++ {
		cut--
	}
	return string(b[:cut])
}
