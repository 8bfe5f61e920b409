package api

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/openfaas/mailbox/internal/callback"
	"github.com/openfaas/mailbox/internal/config"
	"github.com/openfaas/mailbox/internal/delivery"
	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/names"
)

const (
	deadletterPrefix = "/deadletter/"
	maxMessageIDLen  = 64
	// maxEchoLen bounds how much of a rejected value an error message
	// repeats back, so a megabyte header does not become a megabyte answer.
	maxEchoLen = 64
)

// fieldPath is the field of an error about the request's path.
const fieldPath = "path"

// fieldError is a client error that names the header it is about, or
// fieldPath.
type fieldError struct {
	field string
	msg   string
	// err, if set, is what errors.Is finds.
	err error
}

func (e *fieldError) Unwrap() error { return e.err }

func (e *fieldError) Error() string {
	if e.field == "" {
		return e.msg
	}
	return e.field + ": " + e.msg
}

// messageType returns the function named by escapedPath, which must be the
// request's escaped path (r.URL.EscapedPath()). Working on the escaped form
// means %2F, %2E%2E or %25 arrive here as a literal '%' and are rejected,
// instead of being decoded into something that looks valid.
func messageType(escapedPath string) (string, error) {
	name, ok := strings.CutPrefix(escapedPath, deadletterPrefix)
	if !ok {
		return "", &fieldError{field: fieldPath, msg: "must be /deadletter/<function> or /deadletter/<function>.<namespace>"}
	}
	if name == "" {
		return "", &fieldError{field: fieldPath, msg: "missing function name: use /deadletter/<function>"}
	}
	parts := strings.Split(name, ".")
	if len(parts) > 2 {
		return "", &fieldError{field: fieldPath, msg: fmt.Sprintf("message type %s must be <function> or <function>.<namespace>", echo(name))}
	}
	for _, p := range parts {
		if !names.ValidLabel(p) {
			return "", &fieldError{field: fieldPath, msg: fmt.Sprintf("message type %s: %s is not a DNS-1123 label (lowercase letters, digits and '-', 1 to 63 characters, starting and ending with a letter or digit)", echo(name), echo(p))}
		}
	}
	return name, nil
}

// requeueParams are the control headers of one requeue request, checked
// against the caps. The policy holds only what the headers set: the
// connector fills the rest from the function's annotations and the
// mailbox's defaults.
type requeueParams struct {
	retries int
	id      string
	policy  envelope.Policy
	// routed: the request carries X-Dead-Letter-From, so it is a dead
	// letter a dead-letter function requeued; it is never routed again.
	routed bool
}

// parseParams reads the control headers of h. An absent header is unset;
// a present but bad one is an error naming it, never a silent fallback.
func parseParams(h http.Header, d delivery.Defaults, callbacks *callback.Policy) (requeueParams, error) {
	var p requeueParams
	for _, f := range []struct {
		name  string
		parse func(v string) error
	}{
		{envelope.HeaderRetries, func(v string) (err error) {
			p.retries, err = parseCount(envelope.HeaderRetries, v)
			return err
		}},
		{envelope.HeaderMaxRetries, func(v string) error {
			n, err := parseCount(envelope.HeaderMaxRetries, v)
			if err == nil && n > d.MaxRetriesLimit {
				err = &fieldError{field: envelope.HeaderMaxRetries, msg: fmt.Sprintf("%d is above the limit of %d", n, d.MaxRetriesLimit)}
			}
			p.policy.MaxRetries = &n
			return err
		}},
		{envelope.HeaderDelay, func(v string) (err error) {
			p.policy.Delay, err = parseDelay(envelope.HeaderDelay, v, d.MaxDelay, false)
			return err
		}},
		{envelope.HeaderMaxDelay, func(v string) (err error) {
			p.policy.MaxDelay, err = parseDelay(envelope.HeaderMaxDelay, v, d.MaxDelay, true)
			return err
		}},
		{envelope.HeaderTTL, func(v string) (err error) {
			p.policy.TTL, err = parseDelay(envelope.HeaderTTL, v, 0, true)
			return err
		}},
		{envelope.HeaderBackoff, func(v string) error {
			v = strings.ToLower(v)
			if v != envelope.BackoffFixed && v != envelope.BackoffExponential {
				return &fieldError{field: envelope.HeaderBackoff, msg: fmt.Sprintf("%s is not %s or %s", echo(v), envelope.BackoffFixed, envelope.BackoffExponential)}
			}
			p.policy.Backoff = v
			return nil
		}},
		{envelope.HeaderDeadLetterFunction, func(v string) error {
			if !names.Valid(v) {
				return &fieldError{field: envelope.HeaderDeadLetterFunction, msg: fmt.Sprintf("%s is not <function> or <function>.<namespace> (DNS-1123 labels)", echo(v))}
			}
			p.policy.DeadLetterFunction = v
			return nil
		}},
		{envelope.HeaderCallbackURL, func(v string) error {
			// The gateway's functions and callback_allow_hosts only: the
			// connector would POST wherever a caller says.
			if err := callbacks.Check(v); err != nil {
				return &fieldError{field: envelope.HeaderCallbackURL, msg: err.Error(), err: err}
			}
			p.policy.CallbackURL = v
			return nil
		}},
		{envelope.HeaderMessageID, func(v string) error {
			if !isMessageID(v) {
				return &fieldError{field: envelope.HeaderMessageID, msg: fmt.Sprintf("%s must be 1 to %d of A-Z, a-z, 0-9, '_' or '-'", echo(v), maxMessageIDLen)}
			}
			p.id = v
			return nil
		}},
	} {
		v, ok, err := single(h, f.name)
		if err == nil && ok {
			err = f.parse(v)
		}
		if err != nil {
			return p, err
		}
	}
	p.routed = h.Get(envelope.HeaderDeadLetterFrom) != ""
	// The mailbox derives a message's routed dead letter (<id>-dl) and
	// callback (<id>-cb) ids from its own: a caller's id must not take one.
	// A dead-letter function requeuing what it was given keeps its -dl id.
	if strings.HasSuffix(p.id, "-cb") || (strings.HasSuffix(p.id, "-dl") && !p.routed) {
		return p, &fieldError{field: envelope.HeaderMessageID, msg: fmt.Sprintf("%s ends in -cb or -dl, which the mailbox keeps for the ids it derives", echo(p.id))}
	}
	return p, nil
}

// parseDelay parses a duration header: seconds or a Go duration, at most
// limit (0: no limit), above zero when positive.
func parseDelay(field, v string, limit time.Duration, positive bool) (*time.Duration, error) {
	d, err := config.ParseSeconds(v)
	switch {
	case err != nil:
		return nil, &fieldError{field: field, msg: fmt.Sprintf("%s is not a non-negative number of seconds or a duration like 1500ms or 2m", echo(v))}
	case positive && d <= 0:
		return nil, &fieldError{field: field, msg: fmt.Sprintf("%s must be above zero", echo(v))}
	case limit > 0 && d > limit:
		return nil, &fieldError{field: field, msg: fmt.Sprintf("%s is above the limit of %s", d, limit)}
	}
	return &d, nil
}

// single returns the one value of header name. Repeating a control header
// is an error rather than a guess at which copy the caller meant.
func single(h http.Header, name string) (string, bool, error) {
	vs := h.Values(name)
	switch len(vs) {
	case 0:
		return "", false, nil
	case 1:
		return vs[0], true, nil
	default:
		return "", false, &fieldError{field: name, msg: "given more than once"}
	}
}

// parseCount accepts decimal digits only: no sign, no spaces, no empty
// value, so "+3" or " 3" are reported rather than half-understood.
func parseCount(field, v string) (int, error) {
	bad := &fieldError{field: field, msg: fmt.Sprintf("%s is not a non-negative integer", echo(v))}
	if v == "" {
		return 0, bad
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, bad
		}
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, &fieldError{field: field, msg: fmt.Sprintf("%s is too large", echo(v))}
	}
	return n, nil
}

func isMessageID(s string) bool {
	if len(s) == 0 || len(s) > maxMessageIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// newMessageID returns 128 random bits as lowercase hex: URL-safe and
// within the X-Mailbox-Message-Id alphabet, so a function can send it back.
func newMessageID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generating message id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// keptHeaders returns a copy of h without the headers that must not be
// stored with the message: hop-by-hop ones, those of the transport, every
// header the mailbox reads or sets itself (envelope.MailboxHeaders; a
// routed dead letter keeps its X-Dead-Letter-*), which a delivery's
// signature would otherwise vouch for, and, unless keepCredentials,
// credentials, which would otherwise sit at rest on the broker.
func keptHeaders(h http.Header, keepCredentials, routed bool) http.Header {
	out := envelope.StripHeader(h, routed)
	if !keepCredentials {
		out.Del("Authorization")
		out.Del("Cookie")
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// checkText refuses a header value that is not UTF-8. HTTP allows such
// bytes (obs-text), but the envelope keeps headers, and the callback URL,
// as JSON text, where they would become U+FFFD: the function would get
// other bytes than were sent. Credentials that are not kept are not
// checked.
func checkText(h http.Header, keepCredentials bool) error {
	for _, name := range slices.Sorted(maps.Keys(h)) {
		if !keepCredentials && (name == "Authorization" || name == "Cookie") {
			continue
		}
		for _, v := range h[name] {
			if !utf8.ValidString(v) {
				return &fieldError{field: name, msg: "is not valid UTF-8: the mailbox stores headers as text and would change it"}
			}
		}
	}
	return nil
}

// echo quotes a caller-supplied value for an error message, shortened.
func echo(s string) string {
	if len(s) > maxEchoLen {
		return strconv.Quote(s[:maxEchoLen]) + "..."
	}
	return strconv.Quote(s)
}
