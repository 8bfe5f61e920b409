package delivery

import (
	"math"
	"slices"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
)

// Defaults are the mailbox's configured settings: the value of each
// setting that neither a message's headers nor its function's annotations
// set, the caps that bound all three, and the rules that are the
// operator's alone.
type Defaults struct {
	MaxRetries         int
	Delay              time.Duration
	Backoff            string
	TTL                time.Duration // 0: messages do not expire
	DeadLetterFunction string        // "": dead letters are only stored

	// MaxRetriesLimit and MaxDelay cap every source. MaxDelay is also the
	// default X-Max-Delay, which bounds exponential backoff and a
	// function's Retry-After.
	MaxRetriesLimit int
	MaxDelay        time.Duration
	// MinRetryDelay is the least wait between a failed call and the next
	// attempt, whatever a header, an annotation or a Retry-After says, so
	// that one request cannot make calls back to back. The first delivery
	// of a requeued message is not a retry by the mailbox and may be
	// immediate.
	MinRetryDelay time.Duration

	// RetryCodes are the statuses worth another attempt; network errors
	// always are. Any other answer that is not 2xx is a rejection.
	RetryCodes []int
	// NoSuchFunctionGrace is how long a message for a function the
	// gateway does not know is retried (it may be being deployed).
	NoSuchFunctionGrace time.Duration
	// CallbackMaxRetries and CallbackDelay are the callbacks' own retries:
	// exponential backoff from CallbackDelay, capped by MaxDelay.
	CallbackMaxRetries int
	CallbackDelay      time.Duration
}

// DefaultRetryCodes are OpenFaaS Pro's default httpRetryCodes: timeouts,
// rate limits and the gateway's and server errors that pass.
var DefaultRetryCodes = []int{408, 429, 500, 502, 503, 504}

// Policy is the settled policy for one message.
type Policy struct {
	MaxRetries         int
	Delay              time.Duration
	Backoff            string
	MaxDelay           time.Duration
	TTL                time.Duration // 0: no expiry
	DeadLetterFunction string
	CallbackURL        string
	// From Defaults, the same for every message.
	RetryCodes          []int
	NoSuchFunctionGrace time.Duration
	MinRetryDelay       time.Duration
}

// Resolve settles a message's policy: each setting comes from the
// message's headers if set, else from its function's annotations, else
// from d; every source is bounded by d's caps.
//
//	setting               | message header         | annotation (com.openfaas.mailbox.) | default              | cap
//	----------------------+------------------------+------------------------------------+----------------------+------------------
//	max retries           | X-Max-Retries          | max-retries                        | default_max_retries  | max_retries_limit
//	delay                 | X-Delay-Duration       | delay                              | default_delay        | max_delay
//	backoff               | X-Backoff              | backoff                            | default_backoff      |
//	max delay             | X-Max-Delay            | max-delay                          | max_delay            | max_delay
//	ttl                   | X-Message-TTL          | ttl                                | default_ttl          |
//	dead-letter function  | X-Dead-Letter-Function | dead-letter-function               | dead_letter_function |
//	callback URL          | X-Callback-Url         |                                    |                      |
//
// A callback (envelope.KindCallback) has the operator's callback policy
// instead: CallbackMaxRetries retries, exponential from CallbackDelay.
func Resolve(e *envelope.Envelope, fn envelope.Policy, d Defaults) Policy {
	if e.Kind == envelope.KindCallback {
		return Policy{
			MaxRetries: d.CallbackMaxRetries, Delay: d.CallbackDelay, Backoff: envelope.BackoffExponential,
			MaxDelay: d.MaxDelay, RetryCodes: d.RetryCodes, MinRetryDelay: d.MinRetryDelay,
		}
	}
	msg := e.Policy
	p := Policy{
		MaxRetries:          first(msg.MaxRetries, fn.MaxRetries, d.MaxRetries),
		Delay:               first(msg.Delay, fn.Delay, d.Delay),
		Backoff:             firstString(msg.Backoff, fn.Backoff, d.Backoff),
		MaxDelay:            first(msg.MaxDelay, fn.MaxDelay, d.MaxDelay),
		TTL:                 first(msg.TTL, fn.TTL, d.TTL),
		DeadLetterFunction:  firstString(msg.DeadLetterFunction, fn.DeadLetterFunction, d.DeadLetterFunction),
		CallbackURL:         msg.CallbackURL,
		RetryCodes:          d.RetryCodes,
		NoSuchFunctionGrace: d.NoSuchFunctionGrace,
		MinRetryDelay:       d.MinRetryDelay,
	}
	p.MaxRetries = min(p.MaxRetries, d.MaxRetriesLimit)
	p.MaxDelay = min(p.MaxDelay, d.MaxDelay)
	p.Delay = min(p.Delay, d.MaxDelay)
	if p.Backoff == "" {
		p.Backoff = envelope.BackoffFixed
	}
	return p
}

func first[T any](msg, fn *T, def T) T {
	switch {
	case msg != nil:
		return *msg
	case fn != nil:
		return *fn
	default:
		return def
	}
}

func firstString(msg, fn, def string) string {
	switch {
	case msg != "":
		return msg
	case fn != "":
		return fn
	default:
		return def
	}
}

// NextDelay is the wait before the next attempt after attempts attempts
// (at least 1) have been made:
//
//	backoff      | Retry-After > 0 (429 or 503 only) | wait
//	-------------+-----------------------------------+------------------------------------------------
//	any          | yes                               | min(Retry-After, MaxDelay)
//	fixed        | no                                | Delay
//	exponential  | no                                | jitter × min(Delay × 2^(attempts-1), MaxDelay)
//
// jitter is a uniform draw from [0, 1) ("full jitter"): retries of many
// messages that failed together spread over the whole window instead of
// arriving together again.
func NextDelay(p Policy, attempts int, retryAfter time.Duration, jitter float64) time.Duration {
	if retryAfter > 0 {
		return min(retryAfter, p.MaxDelay)
	}
	if p.Backoff != envelope.BackoffExponential || p.Delay <= 0 {
		return p.Delay
	}
	window := p.MaxDelay
	if shift := attempts - 1; shift < 62 {
		if grown := float64(p.Delay) * math.Exp2(float64(shift)); grown < float64(p.MaxDelay) {
			window = time.Duration(grown)
		}
	}
	return time.Duration(jitter * float64(window))
}

// retryable reports whether status is worth another attempt.
func (p Policy) retryable(status int) bool {
	return slices.Contains(p.RetryCodes, status)
}

// expiresAt is when e expires under p; zero when it does not.
func (p Policy) expiresAt(e *envelope.Envelope) time.Time {
	if p.TTL <= 0 {
		return time.Time{}
	}
	return e.AcceptedAt.Add(p.TTL)
}
