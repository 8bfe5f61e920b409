package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/logtest"
	"github.com/openfaas/mailbox/internal/metricstest"

	"github.com/openfaas/faas-provider/auth"
	"github.com/openfaas/faas-provider/types"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/poll"
)

func ptr[T any](v T) *T { return &v }

// goodAnnotations sets every annotation to a good value, which parse to
// goodPolicy and goodLimits.
var goodAnnotations = map[string]string{
	AnnotationMaxRetries:         "5",
	AnnotationDelay:              "1500ms",
	AnnotationBackoff:            "exponential",
	AnnotationMaxDelay:           "2m",
	AnnotationTTL:                "3600",
	AnnotationDeadLetterFunction: "dlq.dev",
	AnnotationMaxConcurrency:     "4",
	AnnotationRate:               "600/m",
	// Not the mailbox's: skipped without a word.
	"topic":                   "payments",
	"com.openfaas.scale.max":  "10",
	"com.openfaas.mailboxish": "x",
}

var (
	goodPolicy = envelope.Policy{
		MaxRetries:         ptr(5),
		Delay:              ptr(1500 * time.Millisecond),
		Backoff:            envelope.BackoffExponential,
		MaxDelay:           ptr(2 * time.Minute),
		TTL:                ptr(time.Hour),
		DeadLetterFunction: "dlq.dev",
	}
	goodLimits = Limits{MaxConcurrency: 4, Rate: 600, Per: time.Minute}
)

func TestParseAnnotationsGood(t *testing.T) {
	p, l, problems := parseAnnotations(goodAnnotations)
	if len(problems) != 0 {
		t.Fatalf("problems %+v, want none", problems)
	}
	if !reflect.DeepEqual(p, goodPolicy) || l != goodLimits {
		t.Fatalf("got %s %+v, want %s %+v", show(p), l, show(goodPolicy), goodLimits)
	}

	none, noLimits, problems := parseAnnotations(nil)
	if !reflect.DeepEqual(none, envelope.Policy{}) || noLimits != (Limits{}) || len(problems) != 0 {
		t.Fatalf("no annotations: got %s %+v %+v, want nothing set", show(none), noLimits, problems)
	}

	tests := []struct {
		annotation, value string
		policy            envelope.Policy
		limits            Limits
	}{
		{AnnotationMaxRetries, "0", envelope.Policy{MaxRetries: ptr(0)}, Limits{}},
		{AnnotationMaxRetries, " 10 ", envelope.Policy{MaxRetries: ptr(10)}, Limits{}},
		{AnnotationDelay, "0", envelope.Policy{Delay: ptr(time.Duration(0))}, Limits{}},
		{AnnotationDelay, "60", envelope.Policy{Delay: ptr(time.Minute)}, Limits{}},
		{AnnotationDelay, "1h30m", envelope.Policy{Delay: ptr(90 * time.Minute)}, Limits{}},
		{AnnotationBackoff, "fixed", envelope.Policy{Backoff: envelope.BackoffFixed}, Limits{}},
		{AnnotationBackoff, "exponential", envelope.Policy{Backoff: envelope.BackoffExponential}, Limits{}},
		{AnnotationMaxDelay, "90", envelope.Policy{MaxDelay: ptr(90 * time.Second)}, Limits{}},
		{AnnotationTTL, "1ms", envelope.Policy{TTL: ptr(time.Millisecond)}, Limits{}},
		{AnnotationTTL, "24h", envelope.Policy{TTL: ptr(24 * time.Hour)}, Limits{}},
		{AnnotationDeadLetterFunction, "dlq", envelope.Policy{DeadLetterFunction: "dlq"}, Limits{}},
		{AnnotationDeadLetterFunction, "dead-letters.openfaas-fn", envelope.Policy{DeadLetterFunction: "dead-letters.openfaas-fn"}, Limits{}},
		{AnnotationMaxConcurrency, "1", envelope.Policy{}, Limits{MaxConcurrency: 1}},
		{AnnotationRate, "10/s", envelope.Policy{}, Limits{Rate: 10, Per: time.Second}},
		{AnnotationRate, "1/h", envelope.Policy{}, Limits{Rate: 1, Per: time.Hour}},
	}
	for _, tt := range tests {
		p, l, problems := parseAnnotations(map[string]string{tt.annotation: tt.value})
		if len(problems) != 0 || !reflect.DeepEqual(p, tt.policy) || l != tt.limits {
			t.Errorf("%s=%q: got %s %+v %+v, want %s %+v", tt.annotation, tt.value, show(p), l, problems, show(tt.policy), tt.limits)
		}
	}
}

// TestParseAnnotationsBad sets one annotation to a bad value next to good
// values of all the others: only that one is ignored and reported.
func TestParseAnnotationsBad(t *testing.T) {
	unset := map[string]func(*envelope.Policy, *Limits){
		AnnotationMaxRetries:         func(p *envelope.Policy, _ *Limits) { p.MaxRetries = nil },
		AnnotationDelay:              func(p *envelope.Policy, _ *Limits) { p.Delay = nil },
		AnnotationBackoff:            func(p *envelope.Policy, _ *Limits) { p.Backoff = "" },
		AnnotationMaxDelay:           func(p *envelope.Policy, _ *Limits) { p.MaxDelay = nil },
		AnnotationTTL:                func(p *envelope.Policy, _ *Limits) { p.TTL = nil },
		AnnotationDeadLetterFunction: func(p *envelope.Policy, _ *Limits) { p.DeadLetterFunction = "" },
		AnnotationMaxConcurrency:     func(_ *envelope.Policy, l *Limits) { l.MaxConcurrency = 0 },
		AnnotationRate:               func(_ *envelope.Policy, l *Limits) { l.Rate, l.Per = 0, 0 },
	}
	tests := []struct {
		annotation, value string
	}{
		{AnnotationMaxRetries, ""},
		{AnnotationMaxRetries, "-1"},
		{AnnotationMaxRetries, "+1"},
		{AnnotationMaxRetries, "3.5"},
		{AnnotationMaxRetries, "three"},
		{AnnotationMaxRetries, "99999999999999999999999"},
		{AnnotationDelay, ""},
		{AnnotationDelay, "-1"},
		{AnnotationDelay, "-1s"},
		{AnnotationDelay, "soon"},
		{AnnotationDelay, "5 minutes"},
		{AnnotationBackoff, ""},
		{AnnotationBackoff, "linear"},
		{AnnotationBackoff, "Exponential"},
		{AnnotationMaxDelay, "-5"},
		{AnnotationMaxDelay, "0s"},
		{AnnotationMaxDelay, "1d"},
		{AnnotationTTL, "0"},
		{AnnotationTTL, "0s"},
		{AnnotationTTL, "-1m"},
		{AnnotationTTL, "forever"},
		{AnnotationDeadLetterFunction, ""},
		{AnnotationDeadLetterFunction, "DLQ"},
		{AnnotationDeadLetterFunction, "dlq.dev.x"},
		{AnnotationDeadLetterFunction, "-dlq"},
		{AnnotationDeadLetterFunction, "dlq/x"},
		{AnnotationDeadLetterFunction, "dlq."},
		{AnnotationMaxConcurrency, "0"},
		{AnnotationMaxConcurrency, "-1"},
		{AnnotationMaxConcurrency, "many"},
		{AnnotationRate, "10"},
		{AnnotationRate, "10/d"},
		{AnnotationRate, "10/S"},
		{AnnotationRate, "10/sec"},
		{AnnotationRate, "0/s"},
		{AnnotationRate, "-1/s"},
		{AnnotationRate, "/s"},
		{AnnotationRate, "1.5/s"},
		{AnnotationRate, "10/s/m"},
	}
	for _, tt := range tests {
		a := maps.Clone(goodAnnotations)
		a[tt.annotation] = tt.value
		p, l, problems := parseAnnotations(a)
		wantP, wantL := goodPolicy, goodLimits
		unset[tt.annotation](&wantP, &wantL)
		if !reflect.DeepEqual(p, wantP) || l != wantL {
			t.Errorf("%s=%q: got %s %+v, want %s %+v", tt.annotation, tt.value, show(p), l, show(wantP), wantL)
		}
		wantLabel := strings.TrimPrefix(tt.annotation, AnnotationPrefix)
		if len(problems) != 1 || problems[0].annotation != tt.annotation || problems[0].label != wantLabel ||
			problems[0].value != tt.value || problems[0].reason == "" {
			t.Errorf("%s=%q: problems %+v, want one about it", tt.annotation, tt.value, problems)
		}
	}

	// A name with the prefix that the mailbox does not know is reported,
	// so a typo does not quietly fall back to the default.
	a := maps.Clone(goodAnnotations)
	a[AnnotationPrefix+"max-retry"] = "3"
	p, l, problems := parseAnnotations(a)
	if !reflect.DeepEqual(p, goodPolicy) || l != goodLimits {
		t.Errorf("unknown annotation: got %s %+v, want the good ones", show(p), l)
	}
	if len(problems) != 1 || problems[0].label != unknownAnnotation || !strings.Contains(problems[0].reason, "max-retries") {
		t.Errorf("unknown annotation: problems %+v, want one labelled %q listing the known ones", problems, unknownAnnotation)
	}
}

func show(p envelope.Policy) string {
	b, _ := json.Marshal(p)
	return string(b)
}

// gateway stands in for the OpenFaaS gateway's /system/namespaces and
// /system/functions, behind basic auth.
type gateway struct {
	t   *testing.T
	srv *httptest.Server

	namespaceCalls atomic.Int64
	functionCalls  atomic.Int64

	mu         sync.Mutex
	namespaces []string
	functions  map[string][]types.FunctionStatus // by namespace; "" when listed without one
	hold       chan struct{}                     // if not nil, /system/namespaces waits until it is closed
	status     int                               // if not 0, every request is answered with it
	fnStatus   int                               // if not 0, /system/functions answers [] with it
}

const (
	testUser     = "admin"
	testPassword = "s3cret"
)

func newGateway(t *testing.T) *gateway {
	g := &gateway{t: t, namespaces: []string{"openfaas-fn", "dev"}, functions: map[string][]types.FunctionStatus{}}
	g.srv = httptest.NewServer(http.HandlerFunc(g.serve))
	t.Cleanup(g.srv.Close)
	return g
}

func (g *gateway) serve(w http.ResponseWriter, r *http.Request) {
	if user, password, ok := r.BasicAuth(); !ok || user != testUser || password != testPassword {
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
		return
	}
	g.mu.Lock()
	status, fnStatus, hold := g.status, g.fnStatus, g.hold
	g.mu.Unlock()
	if status != 0 {
		http.Error(w, http.StatusText(status), status)
		return
	}
	switch r.URL.Path {
	case "/system/namespaces":
		g.namespaceCalls.Add(1)
		if r.URL.RawQuery != "" {
			g.t.Errorf("GET /system/namespaces with query %q", r.URL.RawQuery)
		}
		if hold != nil {
			<-hold
		}
		g.mu.Lock()
		defer g.mu.Unlock()
		json.NewEncoder(w).Encode(g.namespaces)
	case "/system/functions":
		g.functionCalls.Add(1)
		if fnStatus != 0 {
			w.WriteHeader(fnStatus)
			w.Write([]byte("[]"))
			return
		}
		ns := r.URL.Query().Get("namespace")
		g.mu.Lock()
		defer g.mu.Unlock()
		list := []types.FunctionStatus{}
		for _, f := range g.functions[ns] {
			a := maps.Clone(*f.Annotations)
			f.Annotations = &a
			list = append(list, f)
		}
		json.NewEncoder(w).Encode(list)
	default:
		http.NotFound(w, r)
	}
}

// holdNamespaces makes /system/namespaces wait until release is called
// (at the latest when the test ends).
func (g *gateway) holdNamespaces(t *testing.T) (release func()) {
	hold := make(chan struct{})
	g.set(func(g *gateway) { g.hold = hold })
	release = sync.OnceFunc(func() { close(hold) })
	t.Cleanup(release)
	return release
}

// deploy adds the function or replaces its annotations.
func (g *gateway) deploy(namespace, name string, annotations map[string]string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	a := maps.Clone(annotations)
	if a == nil {
		a = map[string]string{}
	}
	f := types.FunctionStatus{Name: name, Namespace: namespace, Image: "ghcr.io/example/" + name, Annotations: &a}
	for i, old := range g.functions[namespace] {
		if old.Name == name {
			g.functions[namespace][i] = f
			return
		}
	}
	g.functions[namespace] = append(g.functions[namespace], f)
}

func (g *gateway) set(f func(g *gateway)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	f(g)
}

type bundle struct {
	c     *Catalog
	gw    *gateway
	reg   *prometheus.Registry
	logs  *logtest.Buffer
	clock *clock
}

// setup returns a Catalog on the gateway's URL with the right credentials
// and a clock of its own; adjust may change the options before New.
func setup(t *testing.T, gw *gateway, adjust func(*Options)) *bundle {
	t.Helper()
	b := &bundle{gw: gw, reg: prometheus.NewRegistry(), logs: &logtest.Buffer{}, clock: &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}}
	o := Options{
		GatewayURL:  gw.srv.URL,
		Credentials: &auth.BasicAuthCredentials{User: testUser, Password: testPassword},
		Client:      &http.Client{Timeout: 5 * time.Second},
		Logger:      slog.New(slog.NewTextHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer:  b.reg,
	}
	if adjust != nil {
		adjust(&o)
	}
	c, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	c.now = b.clock.now
	b.c = c
	return b
}

// read reads the list once, as Run would.
func (b *bundle) read(t *testing.T) {
	t.Helper()
	r := b.c.startRead()
	<-r.done
	if r.err != nil {
		t.Fatalf("reading the list: %v", r.err)
	}
}

func (b *bundle) lookup(t *testing.T, name string) (Function, bool) {
	t.Helper()
	fn, found, err := b.c.Lookup(context.Background(), name)
	if err != nil {
		t.Fatalf("Lookup(%q): %v", name, err)
	}
	return fn, found
}

func TestLookupParsesAnnotations(t *testing.T) {
	gw := newGateway(t)
	gw.deploy("openfaas-fn", "fn", goodAnnotations)
	gw.deploy("openfaas-fn", "plain", nil)
	b := setup(t, gw, nil)

	fn, found := b.lookup(t, "fn")
	if !found {
		t.Fatal("fn not found")
	}
	want := Function{Name: "fn", Namespace: "openfaas-fn", Policy: goodPolicy, Limits: goodLimits}
	if !reflect.DeepEqual(fn, want) {
		t.Fatalf("got %+v %s, want %+v %s", fn, show(fn.Policy), want, show(want.Policy))
	}
	plain, found := b.lookup(t, "plain")
	if !found || !reflect.DeepEqual(plain, Function{Name: "plain", Namespace: "openfaas-fn"}) {
		t.Fatalf("plain: got %+v found %v, want nothing set", plain, found)
	}
	if got := metricstest.Sum(t, b.reg, "mailbox_catalog_functions"); got != 2 {
		t.Errorf("mailbox_catalog_functions = %v, want 2", got)
	}
	if got := metricstest.Sum(t, b.reg, "mailbox_catalog_last_refresh_timestamp_seconds"); got < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("mailbox_catalog_last_refresh_timestamp_seconds = %v, want about now", got)
	}

	// What Lookup returns is the caller's to change.
	*fn.Policy.MaxRetries = 99
	*fn.Policy.Delay = 0
	if again, _ := b.lookup(t, "fn"); !reflect.DeepEqual(again, want) {
		t.Fatalf("after changing a result: got %s, want %s", show(again.Policy), show(want.Policy))
	}
	if n := gw.namespaceCalls.Load(); n != 1 {
		t.Errorf("%d reads of the list, want 1", n)
	}
}

func TestBadAnnotationsIgnoredLoggedOnceCounted(t *testing.T) {
	gw := newGateway(t)
	bad := maps.Clone(goodAnnotations)
	bad[AnnotationMaxRetries] = "lots"
	bad[AnnotationRate] = "fast"
	bad[AnnotationPrefix+"max-retry"] = "3"
	gw.deploy("openfaas-fn", "fn", bad)
	b := setup(t, gw, nil)

	fn, found := b.lookup(t, "fn")
	wantPolicy := goodPolicy
	wantPolicy.MaxRetries = nil
	if !found || !reflect.DeepEqual(fn.Policy, wantPolicy) || fn.Limits != (Limits{MaxConcurrency: 4}) {
		t.Fatalf("got %s %+v found %v, want the good annotations only", show(fn.Policy), fn.Limits, found)
	}
	b.read(t)
	b.read(t)

	wantCounts := map[string]float64{"max-retries": 1, "rate": 1, "unknown": 1, "delay": 0, "ttl": 0}
	for label, want := range wantCounts {
		if got := metricstest.Sum(t, b.reg, "mailbox_catalog_bad_annotations_total", "annotation", label); got != want {
			t.Errorf("mailbox_catalog_bad_annotations_total{annotation=%q} = %v, want %v", label, got, want)
		}
	}
	logs := b.logs.String()
	for _, want := range []string{
		`annotation=com.openfaas.mailbox.max-retries value=lots reason="\"lots\" is not an integer of at least 0"`,
		`annotation=com.openfaas.mailbox.rate value=fast`,
		`annotation=com.openfaas.mailbox.max-retry value=3`,
	} {
		if n := strings.Count(logs, want); n != 1 {
			t.Errorf("%d log lines with %s, want 1:\n%s", n, want, logs)
		}
	}
	if n := strings.Count(logs, "level=WARN msg=\"ignoring a bad mailbox annotation\" component=catalog function=fn.openfaas-fn"); n != 3 {
		t.Errorf("%d warnings naming the function, want 3:\n%s", n, logs)
	}

	// Another bad value, or the same one on another function, is news.
	bad[AnnotationMaxRetries] = "more"
	gw.deploy("openfaas-fn", "fn", bad)
	gw.deploy("dev", "fn", map[string]string{AnnotationRate: "fast"})
	b.read(t)
	b.read(t)
	if got := metricstest.Sum(t, b.reg, "mailbox_catalog_bad_annotations_total", "annotation", "max-retries"); got != 2 {
		t.Errorf("max-retries counted %v times, want 2", got)
	}
	if got := metricstest.Sum(t, b.reg, "mailbox_catalog_bad_annotations_total", "annotation", "rate"); got != 2 {
		t.Errorf("rate counted %v times, want 2", got)
	}
	if n := strings.Count(b.logs.String(), "function=fn.dev annotation=com.openfaas.mailbox.rate value=fast"); n != 1 {
		t.Errorf("%d log lines for fn.dev, want 1:\n%s", n, b.logs.String())
	}
}

func TestNamespaces(t *testing.T) {
	gw := newGateway(t)
	gw.deploy("openfaas-fn", "fn", map[string]string{AnnotationMaxRetries: "1"})
	gw.deploy("dev", "fn", map[string]string{AnnotationMaxRetries: "2"})
	gw.deploy("dev", "only-dev", nil)
	gw.deploy("elsewhere", "unlisted", nil) // in no namespace the gateway lists
	b := setup(t, gw, nil)

	tests := []struct {
		name       string
		found      bool
		namespace  string
		maxRetries int
	}{
		{"fn", true, "openfaas-fn", 1},
		{"fn.openfaas-fn", true, "openfaas-fn", 1},
		{"fn.dev", true, "dev", 2},
		{"only-dev.dev", true, "dev", 0},
		{"only-dev", false, "", 0},
		{"only-dev.openfaas-fn", false, "", 0},
		{"fn.staging", false, "", 0},
		{"unlisted.elsewhere", false, "", 0},
	}
	for _, tt := range tests {
		fn, found := b.lookup(t, tt.name)
		if found != tt.found {
			t.Errorf("%s: found %v, want %v", tt.name, found, tt.found)
			continue
		}
		if !found {
			continue
		}
		name, _, _ := strings.Cut(tt.name, ".")
		if fn.Name != name || fn.Namespace != tt.namespace {
			t.Errorf("%s: got %s in %s, want %s in %s", tt.name, fn.Name, fn.Namespace, name, tt.namespace)
		}
		if got := fn.Policy.MaxRetries; (tt.maxRetries == 0) != (got == nil) || got != nil && *got != tt.maxRetries {
			t.Errorf("%s: max retries %v, want %d", tt.name, got, tt.maxRetries)
		}
	}

	// A name no function can have is not found, and costs the gateway nothing.
	before := gw.namespaceCalls.Load()
	b.clock.add(time.Hour)
	for _, name := range []string{"", "Fn", "fn.dev.x", "fn/x", "../fn", "fn%2F"} {
		if _, found := b.lookup(t, name); found {
			t.Errorf("%q found", name)
		}
	}
	if n := gw.namespaceCalls.Load(); n != before {
		t.Errorf("%d reads for bad names, want none", n-before)
	}
}

func TestProviderWithoutNamespaces(t *testing.T) {
	gw := newGateway(t)
	gw.set(func(g *gateway) { g.namespaces = nil })
	gw.deploy("", "fn", map[string]string{AnnotationRate: "2/s"})
	b := setup(t, gw, func(o *Options) { o.DefaultNamespace = "functions" })

	fn, found := b.lookup(t, "fn")
	if !found || fn.Namespace != "functions" || fn.Limits != (Limits{Rate: 2, Per: time.Second}) {
		t.Fatalf("got %+v found %v, want fn in the default namespace with its rate", fn, found)
	}
	if _, found := b.lookup(t, "fn.functions"); !found {
		t.Error("fn.functions not found")
	}
}

func TestMissRefresh(t *testing.T) {
	gw := newGateway(t)
	gw.deploy("openfaas-fn", "fn", nil)
	b := setup(t, gw, func(o *Options) { o.MissRefresh = 2 * time.Second })
	reads := gw.namespaceCalls.Load

	if _, found := b.lookup(t, "fn"); !found || reads() != 1 {
		t.Fatalf("found %v after %d reads, want found after 1 (the first lookup loads the list)", found, reads())
	}

	gw.deploy("openfaas-fn", "late", map[string]string{AnnotationMaxRetries: "7"})
	if _, found := b.lookup(t, "late"); found || reads() != 1 {
		t.Fatalf("late found %v after %d reads, want not found from the list read just now", found, reads())
	}
	b.clock.add(1999 * time.Millisecond)
	if _, found := b.lookup(t, "late"); found || reads() != 1 {
		t.Fatalf("late found %v after %d reads, want not found: the list is younger than MissRefresh", found, reads())
	}
	b.clock.add(time.Millisecond)
	fn, found := b.lookup(t, "late")
	if !found || reads() != 2 || fn.Policy.MaxRetries == nil || *fn.Policy.MaxRetries != 7 {
		t.Fatalf("late found %v %s after %d reads, want found after a second read", found, show(fn.Policy), reads())
	}

	// A flood of lookups for a function that does not exist reads the
	// list once per MissRefresh.
	for range 3 {
		b.clock.add(2 * time.Second)
		for range 100 {
			if _, found := b.lookup(t, "ghost"); found {
				t.Fatal("ghost found")
			}
			b.clock.add(time.Millisecond)
		}
	}
	if n := reads(); n != 5 {
		t.Fatalf("%d reads after 3 floods, want 5: one more per flood", n)
	}
	// Known functions never cause a read.
	for range 100 {
		b.lookup(t, "fn")
		b.lookup(t, "late")
	}
	if n := reads(); n != 5 {
		t.Fatalf("%d reads after looking up known functions, want 5", n)
	}
}

func TestRecheck(t *testing.T) {
	gw := newGateway(t)
	gw.deploy("openfaas-fn", "fn", map[string]string{AnnotationMaxRetries: "1"})
	gw.deploy("openfaas-fn", "removed", nil)
	b := setup(t, gw, func(o *Options) { o.MissRefresh = 2 * time.Second })
	reads := gw.namespaceCalls.Load
	recheck := func(name string) (Function, bool) {
		t.Helper()
		fn, found, err := b.c.Recheck(context.Background(), name)
		if err != nil {
			t.Fatalf("Recheck(%q): %v", name, err)
		}
		return fn, found
	}

	if _, found := recheck("removed"); !found || reads() != 1 {
		t.Fatalf("found %v after %d reads, want found after 1", found, reads())
	}
	gw.set(func(g *gateway) { g.functions["openfaas-fn"] = g.functions["openfaas-fn"][:1] })
	gw.deploy("openfaas-fn", "fn", map[string]string{AnnotationMaxRetries: "2"})
	b.clock.add(time.Second)
	// Within MissRefresh, both answer from the list read.
	if _, found := recheck("removed"); !found || reads() != 1 {
		t.Fatalf("recheck within MissRefresh: found %v after %d reads, want found from the list read", found, reads())
	}
	b.clock.add(time.Second)
	// Lookup keeps answering from the list for functions in it...
	if _, found := b.lookup(t, "removed"); !found || reads() != 1 {
		t.Fatalf("lookup: found %v after %d reads, want found from the list read", found, reads())
	}
	// ...Recheck reads it again once MissRefresh has passed.
	if _, found := recheck("removed"); found || reads() != 2 {
		t.Fatalf("recheck: found %v after %d reads, want not found after a second read", found, reads())
	}
	if _, found := b.lookup(t, "removed"); found {
		t.Fatal("lookup after recheck: still found")
	}
	fn, found := recheck("fn")
	if !found || *fn.Policy.MaxRetries != 2 || reads() != 2 {
		t.Fatalf("fn: found %v %s after %d reads, want the new annotation from the second read", found, show(fn.Policy), reads())
	}
	// Rechecks read the list once per MissRefresh: 3 s of them, once.
	for range 300 {
		recheck("fn")
		b.clock.add(10 * time.Millisecond)
	}
	if n := reads(); n != 3 {
		t.Fatalf("%d reads after 3 s of rechecks, want 3", n)
	}
}

// Reload asks the gateway every time, even within MissRefresh of a read
// that succeeded: the connector's gate probes a gateway that has just gone
// away with it.
func TestReloadAlwaysReads(t *testing.T) {
	gw := newGateway(t)
	gw.deploy("openfaas-fn", "fn", nil)
	b := setup(t, gw, func(o *Options) { o.MissRefresh = time.Hour })
	ctx := context.Background()
	for i := range 3 {
		if err := b.c.Reload(ctx); err != nil {
			t.Fatalf("Reload: %v", err)
		}
		if n := gw.namespaceCalls.Load(); n != int64(i+1) {
			t.Fatalf("%d reads after %d reloads", n, i+1)
		}
	}
	gw.deploy("openfaas-fn", "new", nil)
	if err := b.c.Reload(ctx); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if _, found := b.lookup(t, "new"); !found {
		t.Fatal("a function deployed before Reload is not found")
	}
	gw.srv.Close()
	if err := b.c.Reload(ctx); err == nil {
		t.Fatal("Reload with the gateway gone: no error")
	}
	// A read in progress is joined.
	gw2 := newGateway(t)
	b2 := setup(t, gw2, nil)
	release := gw2.holdNamespaces(t)
	r := b2.c.startRead()
	done := make(chan error, 1)
	go func() { done <- b2.c.Reload(ctx) }()
	poll.Until(t, 5*time.Second, "the held read", func() bool { return gw2.namespaceCalls.Load() == 1 })
	// ctx bounds the wait.
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := b2.c.Reload(cctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Reload with a held read and a deadline: %v, want DeadlineExceeded", err)
	}
	release()
	<-r.done
	if err := <-done; err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if n := gw2.namespaceCalls.Load(); n != 1 {
		t.Fatalf("%d reads, want Reload to join the one in progress", n)
	}
}

func TestRunRefreshesPeriodically(t *testing.T) {
	gw := newGateway(t)
	gw.deploy("openfaas-fn", "fn", map[string]string{AnnotationDelay: "10s"})
	b := setup(t, gw, func(o *Options) { o.Refresh = 20 * time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.c.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()

	delay := func() time.Duration {
		fn, found := b.lookup(t, "fn")
		if !found || fn.Policy.Delay == nil {
			t.Fatalf("fn found %v with %s, want found with a delay", found, show(fn.Policy))
		}
		return *fn.Policy.Delay
	}
	poll.Until(t, 5*time.Second, "first read", func() bool { return gw.namespaceCalls.Load() >= 1 })
	if d := delay(); d != 10*time.Second {
		t.Fatalf("delay %v, want 10s", d)
	}
	gw.deploy("openfaas-fn", "fn", map[string]string{AnnotationDelay: "20s"})
	poll.Until(t, 5*time.Second, "the changed annotation", func() bool { return delay() == 20*time.Second })
	n := gw.namespaceCalls.Load()
	poll.Until(t, 5*time.Second, "more reads", func() bool { return gw.namespaceCalls.Load() >= n+3 })
	// The clock of the catalog has not moved, so only Run read the list.
	gw.deploy("openfaas-fn", "new", nil)
	poll.Until(t, 5*time.Second, "a new function", func() bool {
		_, found := b.lookup(t, "new")
		return found
	})
	if got := metricstest.Sum(t, b.reg, "mailbox_catalog_functions"); got != 2 {
		t.Errorf("mailbox_catalog_functions = %v, want 2", got)
	}
}

func TestGatewayDown(t *testing.T) {
	t.Run("never loaded", func(t *testing.T) {
		gw := newGateway(t)
		gw.srv.Close()
		b := setup(t, gw, nil)
		fn, found, err := b.c.Lookup(context.Background(), "fn")
		if err == nil || found || fn.Name != "" {
			t.Fatalf("got %+v found %v err %v, want an error", fn, found, err)
		}
		if !strings.Contains(err.Error(), "/system/namespaces") {
			t.Errorf("error %q does not say what failed", err)
		}
		// Within MissRefresh the same answer, without calling again.
		if _, found, err2 := b.c.Lookup(context.Background(), "other"); found || err2 != err {
			t.Errorf("second lookup: found %v err %v, want the first error", found, err2)
		}
		if got := metricstest.Sum(t, b.reg, "mailbox_catalog_refresh_errors_total"); got != 1 {
			t.Errorf("mailbox_catalog_refresh_errors_total = %v, want 1", got)
		}
		if !strings.Contains(b.logs.String(), "cannot read the gateway's function list") {
			t.Errorf("failure not logged:\n%s", b.logs.String())
		}
	})

	t.Run("after a load", func(t *testing.T) {
		gw := newGateway(t)
		gw.deploy("openfaas-fn", "fn", map[string]string{AnnotationMaxRetries: "3"})
		b := setup(t, gw, nil)
		if _, found := b.lookup(t, "fn"); !found {
			t.Fatal("fn not found")
		}
		gw.srv.Close()
		b.clock.add(time.Hour)
		// A function in the last list is still known...
		fn, found := b.lookup(t, "fn")
		if !found || *fn.Policy.MaxRetries != 3 {
			t.Fatalf("fn found %v %s, want the last list's", found, show(fn.Policy))
		}
		// ...but of any other the catalog cannot tell.
		_, found, err := b.c.Lookup(context.Background(), "gone")
		if err == nil || found {
			t.Fatalf("gone: found %v err %v, want an error", found, err)
		}
		if got := metricstest.Sum(t, b.reg, "mailbox_catalog_refresh_errors_total"); got != 1 {
			t.Errorf("mailbox_catalog_refresh_errors_total = %v, want 1", got)
		}
	})

	t.Run("answers 500", func(t *testing.T) {
		gw := newGateway(t)
		gw.set(func(g *gateway) { g.status = http.StatusInternalServerError })
		b := setup(t, gw, nil)
		_, found, err := b.c.Lookup(context.Background(), "fn")
		if err == nil || found || !strings.Contains(err.Error(), "500") || errors.Is(err, ErrCredentials) {
			t.Fatalf("found %v err %v, want an error with the status", found, err)
		}
	})

	t.Run("functions answer 502", func(t *testing.T) {
		// The sdk reads /system/functions without looking at the status.
		gw := newGateway(t)
		gw.set(func(g *gateway) { g.fnStatus = http.StatusBadGateway })
		b := setup(t, gw, nil)
		_, found, err := b.c.Lookup(context.Background(), "fn")
		if err == nil || found || !strings.Contains(err.Error(), "502") {
			t.Fatalf("found %v err %v, want an error with the status", found, err)
		}
	})

	t.Run("Run keeps trying", func(t *testing.T) {
		gw := newGateway(t)
		gw.srv.Close()
		b := setup(t, gw, func(o *Options) { o.Refresh = time.Hour })
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			b.c.Run(ctx)
		}()
		// 100 ms, 200 ms, 400 ms of back-off, although Refresh is an hour.
		poll.Until(t, 5*time.Second, "retries", func() bool {
			return metricstest.Sum(t, b.reg, "mailbox_catalog_refresh_errors_total") >= 4
		})
		select {
		case <-done:
			t.Fatal("Run returned before its context ended")
		default:
		}
		cancel()
		<-done
	})
}

func TestCredentialsRefused(t *testing.T) {
	tests := []struct {
		name  string
		creds *auth.BasicAuthCredentials
		want  string
	}{
		{"wrong password", &auth.BasicAuthCredentials{User: testUser, Password: "wrong"}, "check the basic-auth user and password"},
		{"basic auth off", nil, "basic_auth is off"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gw := newGateway(t)
			gw.deploy("openfaas-fn", "fn", nil)
			b := setup(t, gw, func(o *Options) { o.Credentials = tt.creds })
			_, found, err := b.c.Lookup(context.Background(), "fn")
			if err == nil || found {
				t.Fatalf("found %v err %v, want an error", found, err)
			}
			if !errors.Is(err, ErrCredentials) || !strings.Contains(err.Error(), "credentials") ||
				!strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q, want ErrCredentials with 401 and %q", err, tt.want)
			}
		})
	}
}

func TestConcurrentLookupsShareOneRead(t *testing.T) {
	gw := newGateway(t)
	gw.deploy("openfaas-fn", "fn", map[string]string{AnnotationMaxConcurrency: "3"})
	gw.deploy("dev", "other", nil)
	release := gw.holdNamespaces(t)
	b := setup(t, gw, nil)
	// Every miss would read the list again if reads were not shared.
	b.c.missRefresh = 0

	const n = 60
	names := []string{"fn", "other.dev", "ghost"}
	type result struct {
		name  string
		fn    Function
		found bool
		err   error
	}
	results := make(chan result, n)
	for i := range n {
		go func() {
			name := names[i%len(names)]
			fn, found, err := b.c.Lookup(context.Background(), name)
			results <- result{name, fn, found, err}
		}()
	}
	poll.Until(t, 5*time.Second, "all lookups waiting", func() bool { return b.c.waiting.Load() == n })
	release()
	for range n {
		r := <-results
		if r.err != nil || r.found != (r.name != "ghost") {
			t.Errorf("%s: found %v err %v", r.name, r.found, r.err)
		}
		if r.name == "fn" && r.fn.Limits.MaxConcurrency != 3 {
			t.Errorf("fn: limits %+v, want max concurrency 3", r.fn.Limits)
		}
	}
	if got := gw.namespaceCalls.Load(); got != 1 {
		t.Errorf("%d reads of /system/namespaces, want 1", got)
	}
	if got := gw.functionCalls.Load(); got != 2 {
		t.Errorf("%d reads of /system/functions, want 2 (one per namespace)", got)
	}
}

func TestLookupContextEnds(t *testing.T) {
	gw := newGateway(t)
	gw.deploy("openfaas-fn", "fn", nil)
	release := gw.holdNamespaces(t)
	b := setup(t, gw, nil)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, found, err := b.c.Lookup(ctx, "fn")
	if !errors.Is(err, context.Canceled) || found {
		t.Fatalf("found %v err %v, want context.Canceled", found, err)
	}
	// The read it started goes on for the others.
	other := make(chan bool)
	go func() {
		_, found, _ := b.c.Lookup(context.Background(), "fn")
		other <- found
	}()
	poll.Until(t, 5*time.Second, "the other lookup waiting", func() bool { return b.c.waiting.Load() == 1 })
	release()
	if !<-other {
		t.Fatal("fn not found by the other lookup")
	}
	if got := gw.namespaceCalls.Load(); got != 1 {
		t.Errorf("%d reads, want 1", got)
	}
}

func TestNew(t *testing.T) {
	reg := prometheus.NewRegistry()
	tests := []struct {
		name   string
		adjust func(*Options)
		want   string
	}{
		{"no registerer", func(o *Options) { o.Registerer = nil }, "Registerer"},
		{"no gateway", func(o *Options) { o.GatewayURL = "" }, "GatewayURL"},
		{"no scheme", func(o *Options) { o.GatewayURL = "gateway:8080" }, "GatewayURL"},
		{"negative refresh", func(o *Options) { o.Refresh = -time.Second }, "Refresh"},
		{"bad namespace", func(o *Options) { o.DefaultNamespace = "Fn" }, "DefaultNamespace"},
	}
	for _, tt := range tests {
		o := Options{GatewayURL: "http://gateway.openfaas:8080", Registerer: reg}
		tt.adjust(&o)
		if _, err := New(o); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want one naming %s", tt.name, err, tt.want)
		}
	}
	c, err := New(Options{GatewayURL: "http://gateway.openfaas:8080", Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if c.refresh != DefaultRefresh || c.missRefresh != DefaultMissRefresh || c.client.Timeout != DefaultTimeout || c.defaultNamespace != DefaultNamespace {
		t.Errorf("defaults: refresh %v miss %v timeout %v namespace %q", c.refresh, c.missRefresh, c.client.Timeout, c.defaultNamespace)
	}
	if _, err := New(Options{GatewayURL: "http://gateway.openfaas:8080", Registerer: reg}); err == nil {
		t.Error("second New on the same registry: no error")
	}
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
