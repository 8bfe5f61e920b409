// Package delivery decides a message's fate. It is pure: it takes the stored
// envelope, the outcome of one invocation and the time, and returns what to do
// next. The connector and the requeue API act on its decisions; neither
// decides on its own, so the retry rules live in this file only.
package delivery

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/status"
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
	// Status is the HTTP status the gateway returned; 0 when Err is set or
	// NoSuchFunction is and no call was made.
	Status int
	// Err is set when no response arrived: a network error, a timeout or a
	// cancelled context.
	Err error
	// Body is the start of the response body: ResponseLimit+1 bytes at
	// most (the extra byte shows whether the cut splits a character), or
	// up to the callback limit when the message has a callback URL.
	Body []byte
	// RetryAfter is the Retry-After of a 429 or 503 answer; 0 when none.
	RetryAfter time.Duration
	// CallID is the answer's X-Call-Id.
	CallID string
	// NoSuchFunction: the gateway does not know the function.
	NoSuchFunction bool
}

// Decision is what to do with a message, and the envelopes to store.
type Decision struct {
	Action Action
	// Next is the envelope to store for Retry and DeadLetter: a copy of the
	// input with the decision recorded. It is nil for Ack. Header and Body
	// are shared with the input, so neither may be modified.
	Next *envelope.Envelope
	// Route, with DeadLetter, is the dead letter routed to the policy's
	// dead-letter function, to schedule (due now) besides storing Next.
	Route *envelope.Envelope
	// Callback, for a message's final outcome (Ack or DeadLetter) when it
	// has a callback URL, is the callback to schedule (due now).
	Callback *envelope.Envelope
}

// The wait between attempts while the gateway does not know the function
// is the policy's delay within these bounds: a function being deployed is
// found soon, and the gateway is not asked in a tight loop.
const (
	noSuchFunctionRetryMin = time.Second
	noSuchFunctionRetryMax = 5 * time.Second
)

// Decide turns the result of delivering e under p at now into a decision.
// jitter is a uniform draw from [0, 1) for exponential backoff.
//
//	Result                                | condition                        | Action     | Next
//	--------------------------------------+----------------------------------+------------+----------------------------------------------
//	2xx                                   |                                  | Ack        | nil
//	NoSuchFunction                        | within NoSuchFunctionGrace       | Retry      | not an attempt: Retries kept, MissingSince set,
//	                                      | of MissingSince                  |            | Holds+1, due after Delay bounded to [1s, 5s]
//	NoSuchFunction                        | grace over                       | DeadLetter | reason no-such-function
//	Err, or Status in RetryCodes          | Retries+1 > MaxRetries           | DeadLetter | reason max-retries
//	Err, or Status in RetryCodes          | next due at or after expiry      | DeadLetter | reason expired
//	Err, or Status in RetryCodes          | otherwise                        | Retry      | Retries+1, due after NextDelay,
//	                                      |                                  |            | at least MinRetryDelay
//	any other Status                      |                                  | DeadLetter | reason rejected
//
// Every row but the grace one records the attempt: FirstAttemptAt (if
// still zero) and LastAttemptAt are set to now, LastStatus to r.Status,
// LastError to r.Err's text (or ""), LastResponse to r.Body cut to
// ResponseLimit bytes at a UTF-8 boundary.
//
// Retries counts attempts already made, so X-Retries 0 with X-Max-Retries 3
// delivers with X-Retries 0, 1, 2 and 3 (four calls) before the dead letter.
// A dead letter keeps the Retries and DueAt of its final attempt, so Retries,
// LastStatus and LastError describe the same call.
//
// A dead letter gets a Route when p has a dead-letter function and e is a
// message (KindMessage): a dead letter routed once is never routed again.
// Ack and DeadLetter of a message with a callback URL get a Callback.
//
// e is never modified.
func Decide(e *envelope.Envelope, p Policy, r Result, now time.Time, jitter float64) Decision {
	if r.Err == nil && r.Status >= 200 && r.Status <= 299 {
		return Decision{Action: Ack, Callback: callback(e, p, envelope.OutcomeDelivered, e.Retries+1, r, now)}
	}
	next := *e
	if r.NoSuchFunction {
		if next.MissingSince.IsZero() {
			next.MissingSince = now
		}
		if now.Before(next.MissingSince.Add(p.NoSuchFunctionGrace)) {
			next.DueAt = now.Add(min(max(p.Delay, noSuchFunctionRetryMin), noSuchFunctionRetryMax))
			next.SlotAt = time.Time{}
			next.Holds++
			return Decision{Action: Retry, Next: &next}
		}
	} else {
		next.MissingSince = time.Time{}
	}
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

	attempts := e.Retries + 1
	switch {
	case r.NoSuchFunction:
		return deadLetter(&next, p, envelope.ReasonNoSuchFunction, attempts, r, now)
	case r.Err == nil && !p.retryable(r.Status):
		return deadLetter(&next, p, envelope.ReasonRejected, attempts, r, now)
	case attempts > p.MaxRetries:
		return deadLetter(&next, p, envelope.ReasonMaxRetries, attempts, r, now)
	}
	// Never sooner than MinRetryDelay: one request must not turn into
	// calls back to back.
	due := now.Add(max(NextDelay(p, attempts, r.RetryAfter, jitter), p.MinRetryDelay))
	if exp := p.expiresAt(e); !exp.IsZero() && !due.Before(exp) {
		return deadLetter(&next, p, envelope.ReasonExpired, attempts, r, now)
	}
	next.Retries = e.Retries + 1
	next.DueAt = due
	next.SlotAt = time.Time{}
	return Decision{Action: Retry, Next: &next}
}

// Expired decides, before a call, whether e has expired under p at now:
// then it is a dead letter with reason expired, no call is made, and ok is
// true.
func Expired(e *envelope.Envelope, p Policy, now time.Time) (d Decision, ok bool) {
	if exp := p.expiresAt(e); exp.IsZero() || now.Before(exp) {
		return Decision{}, false
	}
	next := *e
	return deadLetter(&next, p, envelope.ReasonExpired, e.Retries, Result{}, now), true
}

// Refuse decides, before any call, that e is not delivered at all: the
// connector found its function or its callback URL to be one the mailbox
// may not call (why says which; it becomes LastError). It is a dead
// letter with reason refused, no attempt recorded, never routed and never
// called back: its route or callback could go where the refusal forbids.
//
//	condition                                  | Action     | Next
//	-------------------------------------------+------------+-------------------------------
//	function or callback URL refused           | DeadLetter | reason refused, no route or callback
//
// e is never modified.
func Refuse(e *envelope.Envelope, why string, now time.Time) Decision {
	next := *e
	next.Reason = envelope.ReasonRefused
	next.DeadAt = now
	next.LastError = why
	return Decision{Action: DeadLetter, Next: &next}
}

// Defer puts e back until the given time without an attempt (Holds+1): a
// rate or concurrency limit of its function held it. slot is the
// rate-limit slot reserved for it, or zero.
func Defer(e *envelope.Envelope, until, slot time.Time) Decision {
	next := *e
	next.DueAt = until
	next.SlotAt = slot
	next.Holds++
	return Decision{Action: Retry, Next: &next}
}

// Admit decides whether a message arriving through the requeue API is
// scheduled at all:
//
//	condition               | Action     | Next
//	------------------------+------------+------------------------------------
//	Retries > MaxRetries    | DeadLetter | reason max-retries
//	due at or after expiry  | DeadLetter | reason expired
//	otherwise               | Retry      | due after NextDelay(max(Retries, 1))
//
// The function asking for the requeue has already made Retries attempts
// itself (at least one, or it would not be asking), so the first delivery
// by the mailbox is a retry and waits as one. Dead letters are routed and
// called back as in Decide. e is never modified.
func Admit(e *envelope.Envelope, p Policy, now time.Time, jitter float64) Decision {
	next := *e
	if e.Retries > p.MaxRetries {
		return deadLetter(&next, p, envelope.ReasonMaxRetries, e.Retries, Result{}, now)
	}
	due := now.Add(NextDelay(p, max(e.Retries, 1), 0, jitter))
	if exp := p.expiresAt(e); !exp.IsZero() && !due.Before(exp) {
		return deadLetter(&next, p, envelope.ReasonExpired, e.Retries, Result{}, now)
	}
	next.DueAt = due
	return Decision{Action: Retry, Next: &next}
}

// deadLetter is the decision to keep next as a dead letter after
// attempts calls.
func deadLetter(next *envelope.Envelope, p Policy, reason string, attempts int, r Result, now time.Time) Decision {
	next.Reason = reason
	next.DeadAt = now
	return Decision{
		Action:   DeadLetter,
		Next:     next,
		Route:    route(next, p, now),
		Callback: callback(next, p, envelope.OutcomeDeadLettered, attempts, r, now),
	}
}

// route is the dead letter dead for p's dead-letter function, or nil.
func route(dead *envelope.Envelope, p Policy, now time.Time) *envelope.Envelope {
	if p.DeadLetterFunction == "" || dead.Kind != envelope.KindMessage {
		return nil
	}
	h := dead.Header.Clone()
	if h == nil {
		h = http.Header{}
	}
	h.Set(envelope.HeaderDeadLetterReason, dead.Reason)
	h.Set(envelope.HeaderDeadLetterFrom, dead.Function)
	h.Set(envelope.HeaderDeadLetterTime, now.UTC().Format(time.RFC3339Nano))
	h.Set(envelope.HeaderDeadLetterRetries, strconv.Itoa(dead.Retries))
	return &envelope.Envelope{
		// Its own id: the original's schedules must not de-duplicate it.
		ID:         dead.ID + "-dl",
		Kind:       envelope.KindDeadLetter,
		Function:   p.DeadLetterFunction,
		Header:     h,
		Body:       dead.Body,
		AcceptedAt: now,
		DueAt:      now,
		// As for a callback: each life of the message routes its own.
		Replays: dead.Replays,
	}
}

// callback is e's outcome after attempts calls for its callback URL, or
// nil. A delivery sends the function's answer; a dead letter its last
// answer's status and start.
func callback(e *envelope.Envelope, p Policy, outcome string, attempts int, r Result, now time.Time) *envelope.Envelope {
	if p.CallbackURL == "" || e.Kind != envelope.KindMessage {
		return nil
	}
	h := http.Header{}
	h.Set(envelope.HeaderOutcome, outcome)
	h.Set(envelope.HeaderFunctionName, e.Function)
	h.Set(envelope.HeaderMessageID, e.ID)
	h.Set(envelope.HeaderAttempts, strconv.Itoa(attempts))
	if r.CallID != "" {
		h.Set(envelope.HeaderCallID, r.CallID)
	}
	status, body := r.Status, r.Body
	if outcome == envelope.OutcomeDeadLettered {
		h.Set(envelope.HeaderDeadLetterReason, e.Reason)
		status, body = e.LastStatus, []byte(e.LastResponse)
	}
	if status != 0 {
		h.Set(envelope.HeaderFunctionStatus, strconv.Itoa(status))
	}
	return &envelope.Envelope{
		ID:         e.ID + "-cb",
		Kind:       envelope.KindCallback,
		Function:   e.Function,
		Policy:     envelope.Policy{CallbackURL: p.CallbackURL},
		Header:     h,
		Body:       body,
		AcceptedAt: now,
		DueAt:      now,
		// Its message's life: a replayed message's callback is not the
		// earlier life's, which a backend that de-duplicates would drop.
		Replays: e.Replays,
	}
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

// Storer keeps decisions: queue.Queue.
type Storer interface {
	Schedule(ctx context.Context, e *envelope.Envelope) error
	DeadLetter(ctx context.Context, e *envelope.Envelope) error
}

// Store acts on d: it schedules the route and the callback, then stores
// Next (scheduled for Retry, kept for DeadLetter). The new messages go
// first so that a failure part-way leaves the message to be decided
// again: a duplicate at worst, never a loss. Their ids are derived from
// the message's, so a backend that de-duplicates stores them once: a
// message the backend already holds (queue.ErrRepeat) counts as stored.
func (d Decision) Store(ctx context.Context, s Storer) error {
	_, err := d.StoreRepeat(ctx, s)
	return err
}

// StoreRepeat is Store, also reporting whether Next, scheduled, was a
// repeat: the backend already held the same message and stored nothing
// (queue.ErrRepeat). The requeue API tells its caller so.
func (d Decision) StoreRepeat(ctx context.Context, s Storer) (repeat bool, err error) {
	for _, e := range []*envelope.Envelope{d.Route, d.Callback} {
		if e != nil {
			if err := s.Schedule(ctx, e); err != nil && !errors.Is(err, queue.ErrRepeat) {
				return false, err
			}
		}
	}
	switch d.Action {
	case Retry:
		err := s.Schedule(ctx, d.Next)
		if errors.Is(err, queue.ErrRepeat) {
			return true, nil
		}
		return false, err
	case DeadLetter:
		return false, s.DeadLetter(ctx, d.Next)
	}
	return false, nil
}

// Statuses are the steps to record once d, a decision about e, is stored:
// e waiting (Retry), delivered (Ack, with code, the call's HTTP status)
// or dead-lettered (naming its route and callback), and the route and
// the callback waiting under their own ids.
func (d Decision) Statuses(e *envelope.Envelope, code int, now time.Time) []status.Status {
	var out []status.Status
	switch d.Action {
	case Ack:
		s := status.Of(e, status.Delivered, now)
		s.LastStatus = code
		if d.Callback != nil {
			s.Callback = d.Callback.ID
		}
		out = append(out, s)
	case Retry:
		out = append(out, status.Of(d.Next, status.Waiting, now))
	case DeadLetter:
		s := status.Of(d.Next, status.DeadLettered, now)
		if d.Route != nil {
			s.Route = d.Route.ID
		}
		if d.Callback != nil {
			s.Callback = d.Callback.ID
		}
		out = append(out, s)
	}
	for _, m := range []*envelope.Envelope{d.Route, d.Callback} {
		if m != nil {
			out = append(out, status.Of(m, status.Waiting, now))
		}
	}
	return out
}

// Replay is dead, a dead letter, given a new life: due at now with
// retries attempts already made (0 to start again), accepted at now so
// that its TTL and its status start again, with its id, kind, target,
// request and policy kept. Its death is appended to Deaths (the most
// recent MaxDeaths kept) and Replays counted; a backend that
// de-duplicates tells the new life from the old one by Replays. dead is
// never modified.
func Replay(dead *envelope.Envelope, retries int, now time.Time) *envelope.Envelope {
	deaths := append(slices.Clone(dead.Deaths), envelope.Death{
		Reason:     dead.Reason,
		DeadAt:     dead.DeadAt,
		Retries:    dead.Retries,
		LastStatus: dead.LastStatus,
		LastError:  dead.LastError,
	})
	if over := len(deaths) - envelope.MaxDeaths; over > 0 {
		deaths = deaths[over:]
	}
	return &envelope.Envelope{
		ID:         dead.ID,
		Kind:       dead.Kind,
		Function:   dead.Function,
		Header:     dead.Header.Clone(),
		Body:       dead.Body,
		Retries:    retries,
		Policy:     dead.Policy,
		AcceptedAt: now,
		DueAt:      now,
		Replays:    dead.Replays + 1,
		Deaths:     deaths,
	}
}
