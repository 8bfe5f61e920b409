// Package catalog tells the connector what the OpenFaaS gateway knows about
// each function: whether it exists, and the mailbox settings in its
// annotations (see AnnotationPrefix).
//
// The catalog keeps the gateway's whole function list, read with
// faas-provider's sdk (GET /system/namespaces, then /system/functions for
// each namespace), and reads it again every Options.Refresh while Run runs.
// A lookup of a function that is not in the list reads it again at once,
// unless the list was read less than Options.MissRefresh ago, so a function
// deployed a moment ago is found while a flood of messages for one that
// does not exist costs the gateway one read per MissRefresh. Recheck does
// the same for a function in the list, to tell whether a function that
// answered 404 is gone. One read runs at a time; lookups that need one
// meanwhile wait for it.
package catalog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/openfaas/faas-provider/auth"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/limit"
	"github.com/openfaas/mailbox/internal/names"
)

// Defaults of Options.
const (
	DefaultRefresh     = 30 * time.Second
	DefaultMissRefresh = 2 * time.Second
	DefaultTimeout     = 10 * time.Second
	DefaultNamespace   = names.DefaultNamespace
)

// Back-off of Run after a failed read.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// maxLoggedValue bounds how much of a bad annotation's value is logged.
const maxLoggedValue = 64

// Limits are a function's delivery limits from its annotations; zero is
// unlimited.
type Limits = limit.Limits

// Function is one function in the gateway's list.
type Function struct {
	Name      string
	Namespace string
	// Policy is what the function's annotations set; CallbackURL is never
	// set from annotations.
	Policy envelope.Policy
	Limits Limits
}

// Options configure a Catalog.
type Options struct {
	// GatewayURL is the gateway's base URL, e.g. http://gateway.openfaas:8080.
	// Required.
	GatewayURL string
	// Credentials are the gateway's basic-auth credentials; nil when
	// basic_auth is off.
	Credentials *auth.BasicAuthCredentials
	// Client calls the gateway. Its Timeout bounds each call; zero means
	// DefaultTimeout. Defaults to a client with DefaultTimeout.
	Client *http.Client
	// Refresh is how often Run reads the whole list again. Defaults to
	// DefaultRefresh.
	Refresh time.Duration
	// MissRefresh is the least time between two reads caused by looking
	// up a function that is not in the list. Defaults to
	// DefaultMissRefresh.
	MissRefresh time.Duration
	// DefaultNamespace is where the provider puts a function named
	// without a namespace. Defaults to DefaultNamespace, the
	// default of faas-netes and faasd.
	DefaultNamespace string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer takes the catalog's metrics. Required.
	Registerer prometheus.Registerer
}

// Catalog is the gateway's function list. Its methods are safe for
// concurrent use.
type Catalog struct {
	gatewayURL       *url.URL
	creds            *auth.BasicAuthCredentials
	client           *http.Client // Timeout set
	transport        http.RoundTripper
	refresh          time.Duration
	missRefresh      time.Duration
	defaultNamespace string
	log              *slog.Logger
	m                *metrics
	now              func() time.Time // replaced by tests
	waiting          atomic.Int64     // lookups waiting for a read, for tests

	mu     sync.Mutex
	fns    map[string]Function // by name.namespace, from the last read that succeeded; nil before
	flight *read               // the read in progress, if any
	last   *read               // the last read finished, if any

	// Only the read in progress touches these.
	logged  map[string]bool // bad annotations logged, by function, annotation and value
	failing bool            // the last read failed
}

// read is one reading of the gateway's list.
type read struct {
	started time.Time
	done    chan struct{} // closed when fns or err is set
	fns     map[string]Function
	err     error
}

// New returns a Catalog, registering its metrics. It does not call the
// gateway: the first Lookup or Run does.
func New(o Options) (*Catalog, error) {
	if o.Registerer == nil {
		return nil, errors.New("catalog: Registerer is required")
	}
	u, err := url.Parse(o.GatewayURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("catalog: GatewayURL %q is not an http or https URL", o.GatewayURL)
	}
	if o.Refresh < 0 || o.MissRefresh < 0 {
		return nil, errors.New("catalog: Refresh and MissRefresh must not be negative")
	}
	if o.Refresh == 0 {
		o.Refresh = DefaultRefresh
	}
	if o.MissRefresh == 0 {
		o.MissRefresh = DefaultMissRefresh
	}
	if o.DefaultNamespace == "" {
		o.DefaultNamespace = DefaultNamespace
	}
	if !names.ValidLabel(o.DefaultNamespace) {
		return nil, fmt.Errorf("catalog: DefaultNamespace %q is not a DNS-1123 label", o.DefaultNamespace)
	}
	client := &http.Client{}
	if o.Client != nil {
		*client = *o.Client
	}
	if client.Timeout <= 0 {
		client.Timeout = DefaultTimeout
	}
	transport := client.Transport
	if transport == nil {
		transport = http.DefaultTransport
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	return &Catalog{
		gatewayURL:       u,
		creds:            o.Credentials,
		client:           client,
		transport:        transport,
		refresh:          o.Refresh,
		missRefresh:      o.MissRefresh,
		defaultNamespace: o.DefaultNamespace,
		log:              o.Logger.With("component", "catalog"),
		m:                m,
		now:              time.Now,
		logged:           map[string]bool{},
	}, nil
}

// Run reads the list every Refresh until ctx ends. After a failed read it
// tries again with back-off from 100 ms up to 5 s (at most Refresh); it
// never returns before ctx ends. A read in progress when ctx ends finishes
// on its own, within the client's timeout per call.
func (c *Catalog) Run(ctx context.Context) {
	backoff := minBackoff
	for {
		r := c.startRead()
		select {
		case <-ctx.Done():
			return
		case <-r.done:
		}
		wait := c.refresh
		if r.err != nil {
			wait = min(backoff, c.refresh)
			backoff = min(backoff*2, maxBackoff)
		} else {
			backoff = minBackoff
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// Lookup returns the function named by name, "fn" or "fn.namespace"; a
// name without a namespace is in Options.DefaultNamespace, as the
// provider treats it.
//
// A function in the last list read is returned as read then, even if
// reading the list again has failed since (Recheck reads it again).
// found is false with a nil error when a list at most MissRefresh old,
// read now if the last one is older, does not have the function, and at
// once for a name that no function can have (see names.Valid). A non-nil
// error means the catalog cannot tell: the last read failed (the gateway
// cannot be reached, or refused the credentials: ErrCredentials), or ctx
// ended while waiting for a read.
func (c *Catalog) Lookup(ctx context.Context, name string) (fn Function, found bool, err error) {
	return c.lookup(ctx, name, false)
}

// Recheck is Lookup answered from a list at most MissRefresh old, read now
// if the last one is older, even for a function in the last list: after a
// function answered 404 it tells whether the function is gone. Reads it
// causes count against MissRefresh as those of Lookup do.
func (c *Catalog) Recheck(ctx context.Context, name string) (fn Function, found bool, err error) {
	return c.lookup(ctx, name, true)
}

func (c *Catalog) lookup(ctx context.Context, name string, recheck bool) (Function, bool, error) {
	if !names.Valid(name) {
		return Function{}, false, nil
	}
	key := names.Qualify(name, c.defaultNamespace)

	c.mu.Lock()
	if f, ok := c.fns[key]; ok && !recheck {
		c.mu.Unlock()
		return f.clone(), true, nil
	}
	r := c.flight
	if r == nil {
		if last := c.last; last != nil && c.now().Sub(last.started) < c.missRefresh {
			// Fresh enough to answer from: it has the function or not,
			// or it failed.
			c.mu.Unlock()
			f, ok := last.fns[key]
			return f.clone(), ok, last.err
		}
		r = c.startReadLocked()
	}
	c.mu.Unlock()

	c.waiting.Add(1)
	defer c.waiting.Add(-1)
	select {
	case <-r.done:
	case <-ctx.Done():
		return Function{}, false, fmt.Errorf("catalog: waiting for the gateway's function list: %w", ctx.Err())
	}
	if r.err != nil {
		return Function{}, false, r.err
	}
	f, ok := r.fns[key]
	return f.clone(), ok, nil
}

// Reload reads the gateway's list now, or waits for the read in
// progress, and returns that read's error. Unlike Lookup and Recheck it
// never answers from a read already finished, so it tells whether the
// gateway answers now: the connector probes an unreachable gateway with
// it. ctx bounds only the wait.
func (c *Catalog) Reload(ctx context.Context) error {
	r := c.startRead()
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return fmt.Errorf("catalog: waiting for the gateway's function list: %w", ctx.Err())
	}
}

// startRead returns the read in progress, starting one if there is none.
func (c *Catalog) startRead() *read {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.flight != nil {
		return c.flight
	}
	return c.startReadLocked()
}

// startReadLocked starts a read; c.mu is held and no read is in progress.
// The read runs on its own goroutine, so that it does not end with the
// context of whoever started it while others wait for it.
func (c *Catalog) startReadLocked() *read {
	r := &read{started: c.now(), done: make(chan struct{})}
	c.flight = r
	go func() {
		list, err := c.load()
		var fns map[string]Function
		if err == nil {
			fns = c.loaded(list)
		} else {
			c.failed(err)
		}
		c.mu.Lock()
		r.fns, r.err = fns, err
		if err == nil {
			c.fns = fns
		}
		c.flight, c.last = nil, r
		c.mu.Unlock()
		close(r.done)
	}()
	return r
}

// loaded records a list read: metrics, and a log line for each bad
// annotation not logged before.
func (c *Catalog) loaded(list []found) map[string]Function {
	fns := make(map[string]Function, len(list))
	logged := make(map[string]bool)
	for _, f := range list {
		fns[f.key] = f.fn
		for _, p := range f.problems {
			k := f.key + "\x00" + p.annotation + "\x00" + p.value
			logged[k] = true
			if c.logged[k] {
				continue
			}
			c.m.badAnnotations.WithLabelValues(p.label).Inc()
			c.log.Warn("ignoring a bad mailbox annotation", "function", f.key,
				"annotation", p.annotation, "value", shorten(p.value), "reason", p.reason)
		}
	}
	// Forget what is gone, so the set stays as small as the list and a
	// value fixed then broken again is logged again.
	c.logged = logged
	now := time.Now()
	c.m.functions.Set(float64(len(fns)))
	c.m.lastRefresh.Set(float64(now.UnixNano()) / 1e9)
	if c.failing {
		c.log.Info("read the gateway's function list again", "functions", len(fns))
	}
	c.failing = false
	return fns
}

func (c *Catalog) failed(err error) {
	c.m.refreshErrors.Inc()
	c.failing = true
	c.log.Warn("cannot read the gateway's function list", "error", err)
}

func (f Function) clone() Function {
	p := &f.Policy
	p.MaxRetries = clonePtr(p.MaxRetries)
	p.Delay = clonePtr(p.Delay)
	p.MaxDelay = clonePtr(p.MaxDelay)
	p.TTL = clonePtr(p.TTL)
	return f
}

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

func shorten(s string) string {
	if len(s) > maxLoggedValue {
		return s[:maxLoggedValue] + "..."
	}
	return s
}
