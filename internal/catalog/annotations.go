package catalog

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/openfaas/mailbox/internal/config"
	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/names"
)

// AnnotationPrefix starts every annotation the mailbox reads.
const AnnotationPrefix = "com.openfaas.mailbox."

// The annotations a function may set. A duration is a whole number of
// seconds ("60") or a Go duration ("1500ms", "2m"), as X-Delay-Duration.
const (
	// AnnotationMaxRetries: an integer >= 0.
	AnnotationMaxRetries = AnnotationPrefix + "max-retries"
	// AnnotationDelay: a duration.
	AnnotationDelay = AnnotationPrefix + "delay"
	// AnnotationBackoff: "fixed" or "exponential".
	AnnotationBackoff = AnnotationPrefix + "backoff"
	// AnnotationMaxDelay: a duration.
	AnnotationMaxDelay = AnnotationPrefix + "max-delay"
	// AnnotationTTL: a duration above zero.
	AnnotationTTL = AnnotationPrefix + "ttl"
	// AnnotationDeadLetterFunction: "name" or "name.namespace".
	AnnotationDeadLetterFunction = AnnotationPrefix + "dead-letter-function"
	// AnnotationMaxConcurrency: an integer >= 1.
	AnnotationMaxConcurrency = AnnotationPrefix + "max-concurrency"
	// AnnotationRate: "N/s", "N/m" or "N/h", N an integer >= 1 (see
	// config.ParseRate).
	AnnotationRate = AnnotationPrefix + "rate"
)

// unknownAnnotation is the metric label of an annotation with the prefix
// that the mailbox does not know (a typo, most likely).
const unknownAnnotation = "unknown"

// annotationNames are the known annotations without the prefix, the values
// of the bad-annotations metric's label besides unknownAnnotation.
var annotationNames = []string{
	"max-retries", "delay", "backoff", "max-delay", "ttl",
	"dead-letter-function", "max-concurrency", "rate",
}

// problem is one annotation that was ignored.
type problem struct {
	annotation string // the full annotation name
	label      string // its metric label: the name without the prefix, or unknownAnnotation
	value      string
	reason     string
}

// parseAnnotations reads the mailbox's annotations. A bad value leaves its
// setting unset and is reported as a problem; the others still apply.
// Annotations without the prefix are not the mailbox's and are skipped.
// Problems come in the order of the annotation names.
func parseAnnotations(a map[string]string) (envelope.Policy, Limits, []problem) {
	var (
		p        envelope.Policy
		l        Limits
		problems []problem
	)
	keys := make([]string, 0, len(a))
	for k := range a {
		if strings.HasPrefix(k, AnnotationPrefix) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := a[k]
		short := strings.TrimPrefix(k, AnnotationPrefix)
		var err error
		switch k {
		case AnnotationMaxRetries:
			var n int
			if n, err = count(v, 0); err == nil {
				p.MaxRetries = &n
			}
		case AnnotationDelay:
			var d time.Duration
			if d, err = config.ParseSeconds(v); err == nil {
				p.Delay = &d
			}
		case AnnotationBackoff:
			switch b := strings.TrimSpace(v); b {
			case envelope.BackoffFixed, envelope.BackoffExponential:
				p.Backoff = b
			default:
				err = fmt.Errorf("%q is neither %q nor %q", v, envelope.BackoffFixed, envelope.BackoffExponential)
			}
		case AnnotationMaxDelay:
			// Zero would retry with no wait at all, as X-Max-Delay: 0
			// would; the API refuses that too.
			var d time.Duration
			if d, err = config.ParseSeconds(v); err == nil && d == 0 {
				err = fmt.Errorf("%q is not greater than zero", v)
			}
			if err == nil {
				p.MaxDelay = &d
			}
		case AnnotationTTL:
			var d time.Duration
			if d, err = config.ParseSeconds(v); err == nil && d == 0 {
				err = fmt.Errorf("%q is not greater than zero", v)
			}
			if err == nil {
				p.TTL = &d
			}
		case AnnotationDeadLetterFunction:
			if fn := strings.TrimSpace(v); names.Valid(fn) {
				p.DeadLetterFunction = fn
			} else {
				err = fmt.Errorf("%q is not a function name: <function> or <function>.<namespace>, each a DNS-1123 label (lowercase letters, digits and '-', 1 to 63 characters, starting and ending with a letter or digit)", v)
			}
		case AnnotationMaxConcurrency:
			var n int
			if n, err = count(v, 1); err == nil {
				l.MaxConcurrency = n
			}
		case AnnotationRate:
			var r config.Rate
			if r, err = config.ParseRate(v); err == nil {
				l.Rate, l.Per = r.N, r.Per
			}
		default:
			short = unknownAnnotation
			err = fmt.Errorf("not an annotation the mailbox knows; it reads %s followed by one of %s", AnnotationPrefix, strings.Join(annotationNames, ", "))
		}
		if err != nil {
			problems = append(problems, problem{annotation: k, label: short, value: v, reason: err.Error()})
		}
	}
	return p, l, problems
}

// count parses a decimal integer of at least lo: digits only, no sign,
// surrounding white space ignored.
func count(v string, lo int) (int, error) {
	s := strings.TrimSpace(v)
	if s == "" || strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' }) >= 0 {
		return 0, fmt.Errorf("%q is not an integer of at least %d", v, lo)
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("%q is out of range", v)
	}
	if n < lo {
		return 0, fmt.Errorf("%q is less than %d", v, lo)
	}
	return n, nil
}
