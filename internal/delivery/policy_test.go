package delivery

import (
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
)

func ptr[T any](v T) *T { return &v }

// defaults are the mailbox settings the tests resolve against; each
// setting's value differs from the others' so a mix-up shows.
func defaults() Defaults {
	return Defaults{
		MaxRetries:          3,
		Delay:               30 * time.Second,
		Backoff:             "",
		TTL:                 0,
		DeadLetterFunction:  "",
		MaxRetriesLimit:     10,
		MaxDelay:            10 * time.Minute,
		RetryCodes:          DefaultRetryCodes,
		NoSuchFunctionGrace: time.Minute,
		CallbackMaxRetries:  5,
		CallbackDelay:       2 * time.Second,
	}
}

// resolved is what Resolve returns for a message that sets nothing, with
// defaults().
func resolved() Policy {
	return Policy{
		MaxRetries:          3,
		Delay:               30 * time.Second,
		Backoff:             envelope.BackoffFixed,
		MaxDelay:            10 * time.Minute,
		RetryCodes:          DefaultRetryCodes,
		NoSuchFunctionGrace: time.Minute,
	}
}

func TestResolve(t *testing.T) {
	t.Parallel()
	callbackPolicy := Policy{
		MaxRetries: 5,
		Delay:      2 * time.Second,
		Backoff:    envelope.BackoffExponential,
		MaxDelay:   10 * time.Minute,
		RetryCodes: DefaultRetryCodes,
	}
	// everything sets every setting, each to a value no other source has.
	everything := envelope.Policy{
		MaxRetries:         ptr(9),
		Delay:              ptr(9 * time.Second),
		Backoff:            envelope.BackoffExponential,
		MaxDelay:           ptr(9 * time.Minute),
		TTL:                ptr(9 * time.Hour),
		DeadLetterFunction: "dl-everything",
		CallbackURL:        "http://callback.example/everything",
	}

	tests := []struct {
		name string
		kind string
		msg  envelope.Policy
		fn   envelope.Policy
		d    func(*Defaults)
		want func(*Policy)
	}{
		{name: "nothing set: defaults, fixed backoff"},
		{
			name: "zero defaults stay zero but backoff is fixed",
			d: func(d *Defaults) {
				d.MaxRetries, d.Delay = 0, 0
			},
			want: func(p *Policy) { p.MaxRetries, p.Delay = 0, 0 },
		},

		// max retries
		{name: "max retries: message wins", msg: envelope.Policy{MaxRetries: ptr(7)}, fn: envelope.Policy{MaxRetries: ptr(5)}, want: func(p *Policy) { p.MaxRetries = 7 }},
		{name: "max retries: message 0 is set", msg: envelope.Policy{MaxRetries: ptr(0)}, fn: envelope.Policy{MaxRetries: ptr(5)}, want: func(p *Policy) { p.MaxRetries = 0 }},
		{name: "max retries: annotation next", fn: envelope.Policy{MaxRetries: ptr(5)}, want: func(p *Policy) { p.MaxRetries = 5 }},
		{name: "max retries: annotation 0 is set", fn: envelope.Policy{MaxRetries: ptr(0)}, want: func(p *Policy) { p.MaxRetries = 0 }},
		{name: "max retries: default last", d: func(d *Defaults) { d.MaxRetries = 4 }, want: func(p *Policy) { p.MaxRetries = 4 }},
		{name: "max retries: message capped", msg: envelope.Policy{MaxRetries: ptr(50)}, want: func(p *Policy) { p.MaxRetries = 10 }},
		{name: "max retries: annotation capped", fn: envelope.Policy{MaxRetries: ptr(50)}, want: func(p *Policy) { p.MaxRetries = 10 }},
		{name: "max retries: default capped", d: func(d *Defaults) { d.MaxRetries = 50 }, want: func(p *Policy) { p.MaxRetries = 10 }},
		{name: "max retries: at the cap", msg: envelope.Policy{MaxRetries: ptr(10)}, want: func(p *Policy) { p.MaxRetries = 10 }},

		// delay
		{name: "delay: message wins", msg: envelope.Policy{Delay: ptr(time.Second)}, fn: envelope.Policy{Delay: ptr(2 * time.Second)}, want: func(p *Policy) { p.Delay = time.Second }},
		{name: "delay: message 0 is set", msg: envelope.Policy{Delay: ptr(time.Duration(0))}, fn: envelope.Policy{Delay: ptr(2 * time.Second)}, want: func(p *Policy) { p.Delay = 0 }},
		{name: "delay: annotation next", fn: envelope.Policy{Delay: ptr(2 * time.Second)}, want: func(p *Policy) { p.Delay = 2 * time.Second }},
		{name: "delay: default last", d: func(d *Defaults) { d.Delay = 3 * time.Second }, want: func(p *Policy) { p.Delay = 3 * time.Second }},
		{name: "delay: message capped by max_delay", msg: envelope.Policy{Delay: ptr(time.Hour)}, want: func(p *Policy) { p.Delay = 10 * time.Minute }},
		{name: "delay: annotation capped by max_delay", fn: envelope.Policy{Delay: ptr(time.Hour)}, want: func(p *Policy) { p.Delay = 10 * time.Minute }},
		{name: "delay: default capped by max_delay", d: func(d *Defaults) { d.Delay = time.Hour }, want: func(p *Policy) { p.Delay = 10 * time.Minute }},

		// backoff
		{name: "backoff: message wins", msg: envelope.Policy{Backoff: envelope.BackoffExponential}, fn: envelope.Policy{Backoff: envelope.BackoffFixed}, d: func(d *Defaults) { d.Backoff = envelope.BackoffFixed }, want: func(p *Policy) { p.Backoff = envelope.BackoffExponential }},
		{name: "backoff: message fixed wins over exponential", msg: envelope.Policy{Backoff: envelope.BackoffFixed}, fn: envelope.Policy{Backoff: envelope.BackoffExponential}, d: func(d *Defaults) { d.Backoff = envelope.BackoffExponential }},
		{name: "backoff: annotation next", fn: envelope.Policy{Backoff: envelope.BackoffExponential}, d: func(d *Defaults) { d.Backoff = envelope.BackoffFixed }, want: func(p *Policy) { p.Backoff = envelope.BackoffExponential }},
		{name: "backoff: default last", d: func(d *Defaults) { d.Backoff = envelope.BackoffExponential }, want: func(p *Policy) { p.Backoff = envelope.BackoffExponential }},

		// max delay
		{name: "max delay: message wins", msg: envelope.Policy{MaxDelay: ptr(time.Minute)}, fn: envelope.Policy{MaxDelay: ptr(2 * time.Minute)}, want: func(p *Policy) { p.MaxDelay = time.Minute }},
		{name: "max delay: annotation next", fn: envelope.Policy{MaxDelay: ptr(2 * time.Minute)}, want: func(p *Policy) { p.MaxDelay = 2 * time.Minute }},
		{name: "max delay: default is max_delay", d: func(d *Defaults) { d.MaxDelay = 3 * time.Minute }, want: func(p *Policy) { p.MaxDelay = 3 * time.Minute }},
		{name: "max delay: message capped", msg: envelope.Policy{MaxDelay: ptr(time.Hour)}, want: func(p *Policy) { p.MaxDelay = 10 * time.Minute }},
		{name: "max delay: annotation capped", fn: envelope.Policy{MaxDelay: ptr(time.Hour)}, want: func(p *Policy) { p.MaxDelay = 10 * time.Minute }},

		// ttl: no cap
		{name: "ttl: message wins", msg: envelope.Policy{TTL: ptr(time.Hour)}, fn: envelope.Policy{TTL: ptr(2 * time.Hour)}, d: func(d *Defaults) { d.TTL = 3 * time.Hour }, want: func(p *Policy) { p.TTL = time.Hour }},
		{name: "ttl: message 0 is set", msg: envelope.Policy{TTL: ptr(time.Duration(0))}, fn: envelope.Policy{TTL: ptr(2 * time.Hour)}, d: func(d *Defaults) { d.TTL = 3 * time.Hour }},
		{name: "ttl: annotation next", fn: envelope.Policy{TTL: ptr(2 * time.Hour)}, d: func(d *Defaults) { d.TTL = 3 * time.Hour }, want: func(p *Policy) { p.TTL = 2 * time.Hour }},
		{name: "ttl: default last", d: func(d *Defaults) { d.TTL = 3 * time.Hour }, want: func(p *Policy) { p.TTL = 3 * time.Hour }},
		{name: "ttl: not capped by max_delay", msg: envelope.Policy{TTL: ptr(1000 * time.Hour)}, want: func(p *Policy) { p.TTL = 1000 * time.Hour }},

		// dead-letter function
		{name: "dead-letter function: message wins", msg: envelope.Policy{DeadLetterFunction: "dl-msg"}, fn: envelope.Policy{DeadLetterFunction: "dl-fn"}, d: func(d *Defaults) { d.DeadLetterFunction = "dl-default" }, want: func(p *Policy) { p.DeadLetterFunction = "dl-msg" }},
		{name: "dead-letter function: annotation next", fn: envelope.Policy{DeadLetterFunction: "dl-fn"}, d: func(d *Defaults) { d.DeadLetterFunction = "dl-default" }, want: func(p *Policy) { p.DeadLetterFunction = "dl-fn" }},
		{name: "dead-letter function: default last", d: func(d *Defaults) { d.DeadLetterFunction = "dl-default" }, want: func(p *Policy) { p.DeadLetterFunction = "dl-default" }},

		// callback URL: the message's only
		{name: "callback URL: from the message", msg: envelope.Policy{CallbackURL: "http://cb.example/"}, want: func(p *Policy) { p.CallbackURL = "http://cb.example/" }},
		{name: "callback URL: not from annotations", fn: envelope.Policy{CallbackURL: "http://cb.example/fn"}},

		// operator's rules
		{
			name: "retry codes and grace copied",
			d: func(d *Defaults) {
				d.RetryCodes = []int{418}
				d.NoSuchFunctionGrace = 42 * time.Second
			},
			want: func(p *Policy) {
				p.RetryCodes = []int{418}
				p.NoSuchFunctionGrace = 42 * time.Second
			},
		},
		{
			name: "message sets everything",
			msg:  everything,
			fn: envelope.Policy{
				MaxRetries: ptr(1), Delay: ptr(time.Second), Backoff: envelope.BackoffFixed, MaxDelay: ptr(time.Second),
				TTL: ptr(time.Second), DeadLetterFunction: "dl-fn",
			},
			d: func(d *Defaults) { d.DeadLetterFunction, d.TTL = "dl-default", time.Second },
			want: func(p *Policy) {
				p.MaxRetries, p.Delay, p.Backoff, p.MaxDelay = 9, 9*time.Second, envelope.BackoffExponential, 9*time.Minute
				p.TTL, p.DeadLetterFunction, p.CallbackURL = 9*time.Hour, "dl-everything", "http://callback.example/everything"
			},
		},

		// callbacks
		{name: "callback: the callback policy", kind: envelope.KindCallback, want: func(p *Policy) { *p = callbackPolicy }},
		{
			name: "callback: message, annotations and defaults ignored",
			kind: envelope.KindCallback,
			msg:  everything,
			fn:   everything,
			d: func(d *Defaults) {
				d.TTL, d.DeadLetterFunction, d.Backoff, d.MaxRetries, d.Delay = time.Hour, "dl-default", envelope.BackoffFixed, 1, time.Second
			},
			want: func(p *Policy) { *p = callbackPolicy },
		},
		{
			name: "callback: max delay from the defaults",
			kind: envelope.KindCallback,
			d:    func(d *Defaults) { d.MaxDelay = time.Minute },
			want: func(p *Policy) { *p = callbackPolicy; p.MaxDelay = time.Minute },
		},
		{
			name: "dead letter kind: resolved as a message",
			kind: envelope.KindDeadLetter,
			msg:  envelope.Policy{MaxRetries: ptr(7)},
			want: func(p *Policy) { p.MaxRetries = 7 },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := defaults()
			if tt.d != nil {
				tt.d(&d)
			}
			e := &envelope.Envelope{ID: "id-1", Kind: tt.kind, Function: "fn", Policy: tt.msg}
			before := clone(e)
			want := resolved()
			if tt.want != nil {
				tt.want(&want)
			}
			got := Resolve(e, tt.fn, d)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Resolve =\n%+v\nwant\n%+v", got, want)
			}
			if !reflect.DeepEqual(e, before) {
				t.Errorf("input modified")
			}
		})
	}
}

func TestNextDelay(t *testing.T) {
	t.Parallel()
	fixed := Policy{Backoff: envelope.BackoffFixed, Delay: 30 * time.Second, MaxDelay: 10 * time.Minute}
	expo := Policy{Backoff: envelope.BackoffExponential, Delay: time.Second, MaxDelay: time.Minute}
	with := func(p Policy, f func(*Policy)) Policy { f(&p); return p }
	ms := time.Millisecond

	tests := []struct {
		name       string
		p          Policy
		attempts   int
		retryAfter time.Duration
		jitter     float64
		want       time.Duration
	}{
		{name: "fixed, first", p: fixed, attempts: 1, want: 30 * time.Second},
		{name: "fixed, fifth", p: fixed, attempts: 5, want: 30 * time.Second},
		{name: "fixed ignores jitter", p: fixed, attempts: 3, jitter: 0.5, want: 30 * time.Second},
		{name: "fixed above MaxDelay is kept", p: with(fixed, func(p *Policy) { p.MaxDelay = time.Second }), attempts: 1, want: 30 * time.Second},
		{name: "fixed, huge attempts", p: fixed, attempts: math.MaxInt, want: 30 * time.Second},
		{name: "fixed, zero delay", p: with(fixed, func(p *Policy) { p.Delay = 0 }), attempts: 2, want: 0},
		{name: "unknown backoff is fixed", p: with(fixed, func(p *Policy) { p.Backoff = "linear" }), attempts: 4, jitter: 0.5, want: 30 * time.Second},

		{name: "exponential 1, jitter 0", p: expo, attempts: 1, jitter: 0, want: 0},
		{name: "exponential 5, jitter 0", p: expo, attempts: 5, jitter: 0, want: 0},
		{name: "exponential 1, jitter .5", p: expo, attempts: 1, jitter: 0.5, want: 500 * ms},
		{name: "exponential 2, jitter .5", p: expo, attempts: 2, jitter: 0.5, want: time.Second},
		{name: "exponential 3, jitter .5", p: expo, attempts: 3, jitter: 0.5, want: 2 * time.Second},
		{name: "exponential 4, jitter .5", p: expo, attempts: 4, jitter: 0.5, want: 4 * time.Second},
		{name: "exponential 5, jitter .5", p: expo, attempts: 5, jitter: 0.5, want: 8 * time.Second},
		{name: "exponential 6, jitter .5", p: expo, attempts: 6, jitter: 0.5, want: 16 * time.Second},
		{name: "exponential 7 capped, jitter .5", p: expo, attempts: 7, jitter: 0.5, want: 30 * time.Second},
		{name: "exponential 8 capped, jitter .5", p: expo, attempts: 8, jitter: 0.5, want: 30 * time.Second},
		{name: "exponential 1, jitter .999", p: expo, attempts: 1, jitter: 0.999, want: 999 * ms},
		{name: "exponential 3, jitter .999", p: expo, attempts: 3, jitter: 0.999, want: 3996 * ms},
		{name: "exponential capped, jitter .999", p: expo, attempts: 20, jitter: 0.999, want: 59940 * ms},
		{
			name: "exponential window exactly MaxDelay", p: with(expo, func(p *Policy) { p.MaxDelay = 8 * time.Second }),
			attempts: 4, jitter: 0.5, want: 4 * time.Second,
		},
		{
			name: "exponential delay above MaxDelay", p: with(expo, func(p *Policy) { p.Delay = time.Hour }),
			attempts: 1, jitter: 0.5, want: 30 * time.Second,
		},
		{name: "exponential 61", p: expo, attempts: 61, jitter: 0.5, want: 30 * time.Second},
		{name: "exponential 62", p: expo, attempts: 62, jitter: 0.5, want: 30 * time.Second},
		{name: "exponential 63", p: expo, attempts: 63, jitter: 0.5, want: 30 * time.Second},
		{name: "exponential 64", p: expo, attempts: 64, jitter: 0.5, want: 30 * time.Second},
		{name: "exponential 65", p: expo, attempts: 65, jitter: 0.5, want: 30 * time.Second},
		{name: "exponential 1000", p: expo, attempts: 1000, jitter: 0.5, want: 30 * time.Second},
		{name: "exponential MaxInt", p: expo, attempts: math.MaxInt, jitter: 0.5, want: 30 * time.Second},
		{
			name: "exponential, huge MaxDelay", p: with(expo, func(p *Policy) { p.Delay = time.Hour; p.MaxDelay = math.MaxInt64 }),
			attempts: 70, jitter: 0.5, want: time.Duration(0.5 * float64(math.MaxInt64)),
		},
		{
			name: "exponential, delay near the top", p: with(expo, func(p *Policy) { p.Delay = math.MaxInt64 / 2; p.MaxDelay = math.MaxInt64 }),
			attempts: 3, jitter: 0.5, want: time.Duration(0.5 * float64(math.MaxInt64)),
		},

		{name: "retry-after wins over fixed", p: fixed, attempts: 1, retryAfter: 5 * time.Second, want: 5 * time.Second},
		{name: "retry-after wins over exponential", p: expo, attempts: 3, retryAfter: 7 * time.Second, jitter: 0.5, want: 7 * time.Second},
		{name: "retry-after above the exponential window", p: expo, attempts: 1, retryAfter: 50 * time.Second, jitter: 0.5, want: 50 * time.Second},
		{name: "retry-after capped by MaxDelay", p: fixed, attempts: 1, retryAfter: time.Hour, want: 10 * time.Minute},
		{name: "retry-after capped by MaxDelay, exponential", p: expo, attempts: 1, retryAfter: time.Hour, jitter: 0.5, want: time.Minute},
		{name: "retry-after equal to MaxDelay", p: fixed, attempts: 1, retryAfter: 10 * time.Minute, want: 10 * time.Minute},
		{name: "retry-after 0 is none, fixed", p: fixed, attempts: 1, retryAfter: 0, want: 30 * time.Second},
		{name: "retry-after 0 is none, exponential", p: expo, attempts: 2, retryAfter: 0, jitter: 0.5, want: time.Second},
		{name: "negative retry-after is none", p: fixed, attempts: 1, retryAfter: -time.Second, want: 30 * time.Second},
		{name: "retry-after is not jittered", p: expo, attempts: 1, retryAfter: 8 * time.Second, jitter: 0, want: 8 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := NextDelay(tt.p, tt.attempts, tt.retryAfter, tt.jitter); got != tt.want {
				t.Errorf("NextDelay(attempts %d, retry-after %v, jitter %v) = %v, want %v", tt.attempts, tt.retryAfter, tt.jitter, got, tt.want)
			}
		})
	}
}

// TestNextDelayBounded: for every attempt count the exponential wait is
// within [0, MaxDelay] and never shrinks as attempts grow.
func TestNextDelayBounded(t *testing.T) {
	t.Parallel()
	for _, p := range []Policy{
		{Backoff: envelope.BackoffExponential, Delay: time.Nanosecond, MaxDelay: time.Hour},
		{Backoff: envelope.BackoffExponential, Delay: 3 * time.Second, MaxDelay: 10 * time.Minute},
		{Backoff: envelope.BackoffExponential, Delay: time.Hour, MaxDelay: math.MaxInt64},
	} {
		for _, jitter := range []float64{0, 0.5, 0.999} {
			prev := time.Duration(0)
			for attempts := 1; attempts <= 200; attempts++ {
				got := NextDelay(p, attempts, 0, jitter)
				if got < 0 || got > p.MaxDelay {
					t.Fatalf("%+v, attempts %d, jitter %v: %v outside [0, %v]", p, attempts, jitter, got, p.MaxDelay)
				}
				if got < prev {
					t.Fatalf("%+v, attempts %d, jitter %v: %v, less than %v before", p, attempts, jitter, got, prev)
				}
				prev = got
			}
		}
	}
}
