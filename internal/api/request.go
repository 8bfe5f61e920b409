package api

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"

	"github.com/openfaas/mailbox/internal/config"
)

const (
	deadletterPrefix = "/deadletter/"
	maxLabelLen      = 63
	maxMessageIDLen  = 64
	// maxEchoLen bounds how much of a rejected value an error message
	// repeats back, so a megabyte header does not become a megabyte answer.
	maxEchoLen = 64
)

// fieldError is a client error that names the header it is about.
type fieldError struct {
	field string
	msg   string
}

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
		return "", &fieldError{msg: "path must be /deadletter/<function> or /deadletter/<function>.<namespace>"}
	}
	if name == "" {
		return "", &fieldError{msg: "missing function name: use /deadletter/<function>"}
	}
	parts := strings.Split(name, ".")
	if len(parts) > 2 {
		return "", &fieldError{msg: fmt.Sprintf("message type %s must be <function> or <function>.<namespace>", echo(name))}
	}
	for _, p := range parts {
		if !isDNSLabel(p) {
			return "", &fieldError{msg: fmt.Sprintf("message type %s: %s is not a DNS-1123 label (lowercase letters, digits and '-', 1 to 63 characters, starting and ending with a letter or digit)", echo(name), echo(p))}
		}
	}
	return name, nil
}

// isDNSLabel reports whether s is a DNS-1123 label, the form Kubernetes
// requires of function and namespace names.
func isDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > maxLabelLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}

// requeueParams are the control headers of one requeue request, with
// defaults applied and caps checked.
type requeueParams struct {
	retries    int
	maxRetries int
	delay      time.Duration
	id         string
}

// limits are the defaults and caps that parseParams applies.
type limits struct {
	defaultMaxRetries, maxRetriesLimit int
	defaultDelay, maxDelay             time.Duration
}

// parseParams reads the control headers of h. An absent header takes its
// default; a present but bad one is an error naming it, never a silent
// fallback to the default.
func parseParams(h http.Header, l limits) (requeueParams, error) {
	p := requeueParams{maxRetries: l.defaultMaxRetries, delay: l.defaultDelay}

	if v, ok, err := single(h, envelope.HeaderRetries); err != nil {
		return p, err
	} else if ok {
		n, err := parseCount(envelope.HeaderRetries, v)
		if err != nil {
			return p, err
		}
		p.retries = n
	}

	if v, ok, err := single(h, envelope.HeaderMaxRetries); err != nil {
		return p, err
	} else if ok {
		n, err := parseCount(envelope.HeaderMaxRetries, v)
		if err != nil {
			return p, err
		}
		if n > l.maxRetriesLimit {
			return p, &fieldError{field: envelope.HeaderMaxRetries, msg: fmt.Sprintf("%d is above the limit of %d", n, l.maxRetriesLimit)}
		}
		p.maxRetries = n
	}

	if v, ok, err := single(h, envelope.HeaderDelay); err != nil {
		return p, err
	} else if ok {
		d, err := config.ParseSeconds(v)
		if err != nil {
			return p, &fieldError{field: envelope.HeaderDelay, msg: fmt.Sprintf("%s is not a non-negative number of seconds or a duration like 1500ms or 2m", echo(v))}
		}
		if d > l.maxDelay {
			return p, &fieldError{field: envelope.HeaderDelay, msg: fmt.Sprintf("%s is above the limit of %s", d, l.maxDelay)}
		}
		p.delay = d
	}

	if v, ok, err := single(h, envelope.HeaderMessageID); err != nil {
		return p, err
	} else if ok {
		if !isMessageID(v) {
			return p, &fieldError{field: envelope.HeaderMessageID, msg: fmt.Sprintf("%s must be 1 to %d of A-Z, a-z, 0-9, '_' or '-'", echo(v), maxMessageIDLen)}
		}
		p.id = v
	}
	return p, nil
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
// replayed to the function: hop-by-hop ones, those set by the transport
// (Host, Content-Length), the mailbox's control headers (stored as
// envelope fields instead) and, unless keepCredentials, credentials,
// which would otherwise sit at rest on the broker.
func keptHeaders(h http.Header, keepCredentials bool) http.Header {
	out := h.Clone()
	if out == nil {
		return nil
	}
	// Connection may name further per-connection headers.
	for _, v := range h.Values("Connection") {
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				out.Del(name)
			}
		}
	}
	drop := []string{
		// Hop-by-hop: they describe one connection, not the message
		// (RFC 9110 section 7.6.1). Proxy-Connection is the non-standard
		// alias some clients still send.
		"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
		// Set by the transport for this request, not part of the message.
		"Host", "Content-Length",
		envelope.HeaderRetries, envelope.HeaderMaxRetries, envelope.HeaderDelay, envelope.HeaderMessageID,
	}
	for _, name := range drop {
		out.Del(name)
	}
	if !keepCredentials {
		out.Del("Authorization")
		out.Del("Cookie")
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// echo quotes a caller-supplied value for an error message, shortened.
func echo(s string) string {
	if len(s) > maxEchoLen {
		return strconv.Quote(s[:maxEchoLen]) + "..."
	}
	return strconv.Quote(s)
}
