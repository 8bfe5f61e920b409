package requeue

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The mailbox's control headers. The mailbox sets all four on every
// delivery, and reads them on a requeue.
const (
	// HeaderRetries is the number of attempts already made.
	HeaderRetries = "X-Retries"
	// HeaderMaxRetries is the highest X-Retries that is still delivered.
	HeaderMaxRetries = "X-Max-Retries"
	// HeaderDelay is the wait before each delivery: whole seconds ("60")
	// or a Go duration ("1500ms").
	HeaderDelay = "X-Delay-Duration"
	// HeaderMessageID stays the same across the retries of one message.
	HeaderMessageID = "X-Mailbox-Message-Id"
)

// An Option changes how Header and Request fill in the control headers.
type Option func(*options) error

type options struct {
	maxRetries   *int
	defaultDelay *time.Duration
	delay        *time.Duration
	token        string
	delivery     *Delivery
	trust        bool
}

// WithToken makes Request sign the requeue with the mailbox's API token
// (SignRequest), which a mailbox with auth_token_secret set asks for; the
// token itself is never sent. It also makes Request verify the request
// being handled as a signed delivery (Verify, with the body given), to
// carry its control headers over when it was made for the function
// requeued to (or is a routed dead letter going back to its
// X-Dead-Letter-From), unless FromDelivery or TrustIncoming says where
// they come from. Read the token from the secret the function
// is given, e.g. /var/openfaas/secrets/mailbox-token. Header ignores it.
func WithToken(token string) Option {
	return func(o *options) error {
		if token = strings.TrimSpace(token); token == "" {
			return errors.New("requeue: WithToken: the token is empty")
		}
		o.token = token
		return nil
	}
}

// WithDefaultMaxRetries sets X-Max-Retries when the request being handled
// has none, which is the case on its first requeue. A value the request
// carries is kept. Without this option the header is left out and the
// mailbox applies its default_max_retries (10 unless configured).
func WithDefaultMaxRetries(n int) Option {
	return func(o *options) error {
		if n < 0 {
			return fmt.Errorf("requeue: WithDefaultMaxRetries(%d): must be >= 0", n)
		}
		o.maxRetries = &n
		return nil
	}
}

// WithDefaultDelay sets X-Delay-Duration when the request being handled
// has none. A value the request carries is kept. Without this option (and
// without WithDelay) the header is left out and the mailbox applies its
// default_delay (60s unless configured).
func WithDefaultDelay(d time.Duration) Option {
	return func(o *options) error {
		if d < 0 {
			return fmt.Errorf("requeue: WithDefaultDelay(%s): must be >= 0", d)
		}
		o.defaultDelay = &d
		return nil
	}
}

// WithDelay sets X-Delay-Duration whatever the request carries, for
// example from the Retry-After of a rate-limited API. The mailbox keeps it
// for the later retries of the message too, unless they set it again.
func WithDelay(d time.Duration) Option {
	return func(o *options) error {
		if d < 0 {
			return fmt.Errorf("requeue: WithDelay(%s): must be >= 0", d)
		}
		o.delay = &d
		return nil
	}
}

// FromDelivery takes the control headers from d, a delivery Verify
// accepted, instead of from the incoming request's headers.
func FromDelivery(d *Delivery) Option {
	return func(o *options) error {
		if d == nil {
			return errors.New("requeue: FromDelivery(nil): pass the Delivery Verify returned")
		}
		o.delivery = d
		return nil
	}
}

// TrustIncoming takes the control headers from the incoming request's
// headers as they are, unverified. Use it only with a mailbox that has no
// token (so its deliveries are not signed) and a function that only the
// mailbox can call: any caller of a function behind the public gateway
// could otherwise raise its retries, reuse another message's id or turn
// its dead-letter routing off.
func TrustIncoming() Option {
	return func(o *options) error {
		o.trust = true
		return nil
	}
}

// Header returns the control headers of a requeue of the request whose
// headers are in, one attempt later.
//
// The control headers of the request being handled (X-Retries,
// X-Max-Retries, X-Delay-Duration, X-Mailbox-Message-Id and the
// X-Dead-Letter-* of a routed dead letter) are carried over only from a
// verified delivery (FromDelivery), or with TrustIncoming from in as it
// is. Otherwise anyone who can call the function could set them, so they
// are dropped and the requeue has the function's own options, except
// X-Retries, which still counts:
//
//   - X-Retries: the carried value plus one, else 1 (the call being
//     handled was the first attempt, attempt 0). Unverified, in's
//     X-Retries is still taken when it is a plain count: raising it only
//     ends the caller's own message sooner, and a function called by a
//     connector that does not sign must not start again at 1 for ever.
//   - X-Max-Retries: the carried value, else WithDefaultMaxRetries, else
//     left out
//   - X-Delay-Duration: WithDelay, else the carried value, else
//     WithDefaultDelay, else left out
//   - X-Mailbox-Message-Id: the carried value, else left out (the
//     mailbox picks a new id)
//   - X-Dead-Letter-Reason, -From, -Time and -Retries: the carried
//     values, on a dead letter routed to this function
//   - Content-Type: in's value, else left out
//
// No credential is set (the incoming request's are never passed on);
// Request signs the requeue with WithToken, or use SignRequest.
//
// A carried control header that is given more than once, or an X-Retries
// that is not a non-negative integer, is an error naming the header:
// Header does not guess. Other values are carried over as they are; the
// mailbox checks them and answers 400 if they are bad.
func Header(in http.Header, opts ...Option) (http.Header, error) {
	var o options
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(&o); err != nil {
			return nil, err
		}
	}

	out := http.Header{}
	if ct := in.Get("Content-Type"); ct != "" {
		out.Set("Content-Type", ct)
	}
	var from http.Header // where the control headers come from
	switch {
	case o.delivery != nil:
		from = o.delivery.header
	case o.trust:
		from = in
	}
	retries, ok, err := single(from, HeaderRetries)
	if err != nil {
		return nil, err
	}
	if from == nil {
		// Unverified, X-Retries still counts, when it reads as a count: a
		// caller who raises it only ends its own message sooner, while
		// dropping it would let a requeue from an unsigned delivery (a
		// connector without the token) start again at 1 for ever.
		retries, ok, _ = single(in, HeaderRetries)
		n, err := strconv.Atoi(retries)
		ok = ok && err == nil && isDigits(retries) && n < math.MaxInt
	}
	next := 1
	if ok {
		n, err := strconv.Atoi(retries)
		if err != nil || n < 0 || !isDigits(retries) {
			return nil, fmt.Errorf("requeue: incoming %s: %q is not a non-negative integer", HeaderRetries, retries)
		}
		if n == math.MaxInt {
			return nil, fmt.Errorf("requeue: incoming %s: %d cannot be incremented", HeaderRetries, n)
		}
		next = n + 1
	}
	out.Set(HeaderRetries, strconv.Itoa(next))

	maxRetries, ok, err := single(from, HeaderMaxRetries)
	switch {
	case err != nil:
		return nil, err
	case ok:
		out.Set(HeaderMaxRetries, maxRetries)
	case o.maxRetries != nil:
		out.Set(HeaderMaxRetries, strconv.Itoa(*o.maxRetries))
	}

	delay, ok, err := single(from, HeaderDelay)
	switch {
	case err != nil:
		return nil, err
	case o.delay != nil:
		out.Set(HeaderDelay, FormatDelay(*o.delay))
	case ok:
		out.Set(HeaderDelay, delay)
	case o.defaultDelay != nil:
		out.Set(HeaderDelay, FormatDelay(*o.defaultDelay))
	}

	id, ok, err := single(from, HeaderMessageID)
	if err != nil {
		return nil, err
	}
	if ok {
		out.Set(HeaderMessageID, id)
	}

	// A dead letter the mailbox routed to this function stays one when
	// requeued, so the mailbox never routes it again (no cycles).
	for _, name := range deadLetterHeaders {
		if v := from.Get(name); v != "" {
			out.Set(name, v)
		}
	}
	return out, nil
}

// deadLetterHeaders are on a dead letter the mailbox routed to a
// dead-letter function.
var deadLetterHeaders = []string{"X-Dead-Letter-Reason", "X-Dead-Letter-From", "X-Dead-Letter-Time", "X-Dead-Letter-Retries"}

// FormatDelay writes d as the mailbox writes X-Delay-Duration: whole
// seconds as an integer ("60"), anything finer as a Go duration ("1.5s").
func FormatDelay(d time.Duration) string {
	if d%time.Second == 0 {
		return strconv.FormatInt(int64(d/time.Second), 10)
	}
	return d.String()
}

// ParseDelay reads a delay as the mailbox reads X-Delay-Duration: whole
// seconds ("60") or a Go duration ("1500ms"), not negative. It is the
// inverse of FormatDelay, for a function's own settings.
func ParseDelay(v string) (time.Duration, error) {
	if n, err := strconv.Atoi(v); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("%q is negative", v)
		}
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%q is not a non-negative number of seconds or a duration like 1500ms", v)
	}
	return d, nil
}

// errRepeated is wrapped by the error for a control header given more
// than once.
var errRepeated = errors.New("given more than once")

// single returns the one value of header name in h.
func single(h http.Header, name string) (string, bool, error) {
	vs := h.Values(name)
	switch len(vs) {
	case 0:
		return "", false, nil
	case 1:
		return vs[0], true, nil
	default:
		return "", false, fmt.Errorf("requeue: incoming %s: %w", name, errRepeated)
	}
}

// isDigits reports whether s is a non-empty run of ASCII digits: no sign,
// no spaces, as the mailbox requires of X-Retries.
func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
