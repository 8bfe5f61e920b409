// Package chaos runs the mailbox inside real OpenFaaS (the test bed of
// package bed) under sustained load, and SIGKILLs and restarts its parts
// in turn while the load runs: the requeue API (mailbox-fn), the
// connector, the NATS server and the gateway; and, with the mailbox on a
// 3-node JetStream cluster (streams at 3 replicas, each node in a network
// namespace of its own), the stream's leader node and a follower node,
// each SIGKILLed and restarted, then each cut off from the other nodes
// and every client (its link down) and healed. It is black-box: requeues
// go through the gateway with ids it chooses, and the function the
// mailbox delivers to (testfn's random behaviour, failing a third of its
// calls) reports each call to a recorder in this process.
//
// Two more scenarios per backend: Serve* sends the requeues, with the
// token, to two mailbox serve replicas (the standalone binary) on the
// bed's NATS, alternately, and SIGKILLs and restarts one replica, the
// other, then NATS; Disk* puts the NATS store on a small tmpfs and fills
// it under load with a filler file (on JetStream first its storage limit
// with a stream of another writer), wants requeues refused with 507 or
// 503 naming the cause, with Retry-After, none left unanswered, and
// requeues accepted again once the filler is gone, the mailbox not
// restarted (the NATS server is, where it cannot recover by itself).
//
// The verdict, once per scenario: every requeue answered 202 is delivered
// with a 2xx or kept as a dead letter; every message delivered more than
// once was in flight at a fault; and each fault's recovery times are
// reported (docs/reliability.md).
//
// The short form runs with the README's test command. The long form is
// by hand (see settings), for instance
//
//	cd test && MAILBOX_CHAOS_DURATION=1h MAILBOX_CHAOS_RATE=200 go test -timeout 2h -run '^TestChaos$/^JetStream$' ./chaos/
package chaos

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openfaas/mailbox/test/e2e/bed"
	"github.com/openfaas/mailbox/test/internal/nocache"
)

// binaries are built once, before the tests move into the bed's
// namespaces.
var binaries bed.Binaries

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run()) // every test skips, saying why
	}
	os.Exit(bed.Main(context.Background(), filepath.Join("..", ".."), func(b bed.Binaries) int {
		binaries = b
		return m.Run()
	}))
}

// recorderAddress is where the recorder listens, in the bed's network
// namespace.
const recorderAddress = "127.0.0.1:9101"

// settings are a run's, from the environment: the short form without it.
type settings struct {
	// duration is how long the load runs in the long form
	// (MAILBOX_CHAOS_DURATION); 0 is the short form, one fault of each
	// kind.
	duration time.Duration
	// rate is requeues per second (MAILBOX_CHAOS_RATE).
	rate float64
	// faultEvery is the time from one fault to the next in the long form
	// (MAILBOX_CHAOS_FAULT_EVERY).
	faultEvery time.Duration
	// calm is how long the load runs after deliveries resumed before the
	// next fault, in the short form.
	calm time.Duration
	// upstreamTimeout is the mailbox's upstream_timeout
	// (MAILBOX_CHAOS_UPSTREAM_TIMEOUT), which sizes the ack waits.
	upstreamTimeout string
	// settle bounds the wait, after the last fault, for every accepted
	// message to be delivered or dead-lettered (MAILBOX_CHAOS_SETTLE).
	settle time.Duration
	// report is a file the figures are appended to, as Markdown
	// (MAILBOX_CHAOS_REPORT).
	report string
}

func loadSettings(t *testing.T) settings {
	s := settings{rate: 40, faultEvery: 5 * time.Second, calm: 5 * time.Second, upstreamTimeout: "30s", settle: 3 * time.Minute}
	dur := func(name string, into *time.Duration) {
		if v := os.Getenv(name); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 {
				t.Fatalf("%s=%q: want a duration such as 1h", name, v)
			}
			*into = d
		}
	}
	dur("MAILBOX_CHAOS_DURATION", &s.duration)
	dur("MAILBOX_CHAOS_FAULT_EVERY", &s.faultEvery)
	dur("MAILBOX_CHAOS_SETTLE", &s.settle)
	if v := os.Getenv("MAILBOX_CHAOS_RATE"); v != "" {
		if _, err := fmt.Sscan(v, &s.rate); err != nil || s.rate <= 0 {
			t.Fatalf("MAILBOX_CHAOS_RATE=%q: want requeues per second, above 0", v)
		}
	}
	if v := os.Getenv("MAILBOX_CHAOS_UPSTREAM_TIMEOUT"); v != "" {
		s.upstreamTimeout = v
	}
	s.report = os.Getenv("MAILBOX_CHAOS_REPORT")
	return s
}

func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the bed builds and runs OpenFaaS, NATS and the mailbox, which takes minutes")
	}
	nocache.Mark(t)
	s := loadSettings(t)
	t.Run("Stan", func(t *testing.T) { run(t, s, scenario{name: bed.Stan, backend: bed.Stan, faults: faultOrder}) })
	t.Run("JetStream", func(t *testing.T) {
		run(t, s, scenario{name: bed.JetStream, backend: bed.JetStream, faults: faultOrder})
	})
	t.Run("JetStreamCluster", func(t *testing.T) { run(t, s, clusterScenario(s)) })
	t.Run("ServeStan", func(t *testing.T) { run(t, s, serveScenario(bed.Stan)) })
	t.Run("ServeJetStream", func(t *testing.T) { run(t, s, serveScenario(bed.JetStream)) })
	t.Run("DiskStan", func(t *testing.T) { run(t, s, diskScenario(bed.Stan)) })
	t.Run("DiskJetStream", func(t *testing.T) { run(t, s, diskScenario(bed.JetStream)) })
}

// scenario is what a run sets up, sends requeues to and which faults it
// injects.
type scenario struct {
	name    string // in the figures and the messages' ids
	backend string
	// clusterNodes runs the mailbox's JetStream as a cluster of that
	// many nodes (bed.Config.ClusterNodes).
	clusterNodes int
	// faults come in this order, again and again in the long form.
	faults []string
	// ready, if set, returns once the bed is ready for the next fault
	// (a cluster whole again).
	ready func(context.Context, *bed.Bed) error
	// serve sends the requeues to two mailbox serve replicas
	// (serve_test.go) instead of the bed's mailbox function.
	serve bool
	// storeSize, when not 0, puts the NATS store of the backend on a
	// tmpfs of that many bytes (disk_test.go).
	storeSize int64
}

// faultRun is one fault injected, and how the system came back.
type faultRun struct {
	name      string
	at        time.Time // SIGKILL
	restarted time.Time // running again
	accepted  time.Time // the first 202 after the kill
	delivered time.Time // the first 2xx call after the restart
	err       error
}

func run(t *testing.T, s settings, sc scenario) {
	ctx := context.Background()
	backend := sc.backend
	// Every component's output, in a file kept when the test fails: at
	// hundreds of requeues a second it is too much for the test's log.
	logs, err := os.CreateTemp("", "mailbox-chaos-"+sc.name+"-*.log")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		logs.Close()
		if t.Failed() || os.Getenv("MAILBOX_CHAOS_KEEP_LOG") != "" {
			t.Logf("every component's output: %s", logs.Name())
		} else {
			os.Remove(logs.Name())
		}
	}()
	env := []string{"upstream_timeout=" + s.upstreamTimeout}
	if s.duration > 0 {
		env = append(env, "log_level=info") // not a line per delivery
	}
	dir := t.TempDir()
	var disk *store
	if sc.storeSize > 0 {
		disk = mountStore(t, dir, backend, sc.storeSize)
	}
	b, err := bed.Start(ctx, bed.Config{Backend: backend, Bin: binaries, Dir: dir, Log: logs, MailboxEnv: env,
		ClusterNodes: sc.clusterNodes})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	tgt := mailboxTarget
	if sc.serve {
		if tgt, err = startServe(b); err != nil {
			t.Fatal(err)
		}
	}
	rec := newRecord()
	ln, err := net.Listen("tcp", recorderAddress)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: rec, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	if err := b.DeployTestFunction(ctx, bed.Random, nil, "fail_ratio=0.33", "report_url=http://"+recorderAddress+"/"); err != nil {
		t.Fatal(err)
	}

	mem := startMemory(2 * time.Second)
	start := time.Now()
	l := startLoad(rec, sc.name, s.rate, tgt)
	stopped := false
	stopLoad := func() {
		if !stopped {
			stopped = true
			l.Stop()
		}
	}
	defer stopLoad()
	if err := poll(ctx, 60*time.Second, "the first delivery", func() error {
		if _, _, ok := rec.resumed(start); !ok {
			return fmt.Errorf("no 202 and 2xx call yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// A little undisturbed load first, to compare with.
	select {
	case <-time.After(s.calm):
	case <-ctx.Done():
	}

	var faults []faultRun
	for i := 0; ; i++ {
		if s.duration == 0 && i == len(sc.faults) || s.duration > 0 && time.Since(start) >= s.duration {
			break
		}
		if sc.ready != nil {
			if err := sc.ready(ctx, b); err != nil {
				t.Error(err)
				break
			}
		}
		f := faultRun{name: sc.faults[i%len(sc.faults)], at: time.Now()}
		switch f.name {
		case faultDisk:
			f.err = disk.fault(ctx, t, b, rec)
		case faultStoreLimit:
			f.err = storeLimitFault(ctx, t, b, rec)
		default:
			f.err = inject(ctx, b, rec, f.name)
		}
		if f.err != nil {
			faults = append(faults, f)
			t.Errorf("%s: %v", f.name, f.err)
			break
		}
		f.restarted = time.Now()
		f.err = poll(ctx, 2*time.Minute, "requeues and deliveries to resume after the "+f.name+" fault", func() error {
			a, _, ok := rec.resumed(f.at)
			_, d, ok2 := rec.resumed(f.restarted)
			if !ok || !ok2 {
				return fmt.Errorf("no 202 since the kill or no 2xx call since the restart")
			}
			f.accepted, f.delivered = a, d
			return nil
		})
		faults = append(faults, f)
		if f.err != nil {
			t.Error(f.err)
			break
		}
		t.Logf("%s killed at %s: restarted after %s, a requeue accepted after %s, a delivery after %s", f.name,
			f.at.Format(time.TimeOnly), f.restarted.Sub(f.at).Round(time.Millisecond),
			f.accepted.Sub(f.at).Round(time.Millisecond), f.delivered.Sub(f.at).Round(time.Millisecond))
		next := f.delivered.Add(s.calm)
		if s.duration > 0 {
			next = f.at.Add(s.faultEvery)
		}
		select {
		case <-time.After(time.Until(next)):
		case <-ctx.Done():
		}
	}
	stopLoad()
	loadEnd := time.Now()

	// Every accepted message delivered or kept as a dead letter.
	dl := newDeadLetters(backend, b.MailboxNATSURL(), tgt.prefix)
	var dead map[string]bool
	// Within go test's -timeout, so that a failure is reported, not a
	// panic.
	bound := s.settle
	if d, ok := t.Deadline(); ok {
		bound = max(time.Second, min(bound, time.Until(d)-30*time.Second))
	}
	settleErr := poll(ctx, bound, "every accepted message delivered or dead-lettered", func() error {
		open := rec.open()
		if len(open) == 0 {
			return nil
		}
		var err error
		if dead, err = dl.read(ctx); err != nil {
			return fmt.Errorf("reading the dead letters: %w", err)
		}
		var left []string
		for _, m := range open {
			if !dead[m.id] {
				left = append(left, m.id)
			}
		}
		if len(left) > 0 {
			return fmt.Errorf("%d accepted messages neither delivered nor dead letters, such as %v", len(left), left[:min(len(left), 5)])
		}
		return nil
	})
	settled := time.Now()
	if err := poll(ctx, time.Minute, "the dead letters", func() (err error) {
		dead, err = dl.read(ctx)
		return err
	}); err != nil {
		t.Error(err)
	}
	mem.stop()
	v := verdict(rec, dead, faults)
	if settleErr != nil {
		t.Errorf("lost: %v", settleErr)
	}
	for _, e := range v.errors {
		t.Error(e)
	}
	figures := v.figures(sc, s, start, loadEnd, settled, faults, l.skipped.Load(), mem)
	t.Log("\n" + figures)
	if s.report != "" {
		f, err := os.OpenFile(s.report, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			_, err = f.WriteString(figures + "\n")
			f.Close()
		}
		if err != nil {
			t.Errorf("MAILBOX_CHAOS_REPORT: %v", err)
		}
	}
}

// dupSlack is how long before a fault a message's first 2xx may have come
// and the message still be in flight at the fault: the connector stores
// the outcome and acknowledges the message after the call.
const dupSlack = 2 * time.Second

// result is what the verdict found.
type result struct {
	sent, accepted, refused, unanswered int
	refusedBy                           map[string]int // by status and cause
	delivered, deadLettered, both       int
	dupMessages, dupCalls               int
	dupUnanswered                       int // duplicates at no fault: a 2xx call's answer lost, the message retried
	inFlight                            int // messages in flight at some fault: the bound of dupMessages
	unacceptedDelivered                 int // not answered 202, delivered all the same
	unknown                             int
	calls, failedCalls                  int
	latest                              []lateCall // the latest calls, latest first
	byFault                             [][]time.Duration
	baseline                            []time.Duration // of the calls due before the first fault
	errors                              []string
}

// verdict checks the record once everything has settled: nothing accepted
// is lost, nothing unknown is delivered, and every message delivered more
// than once was in flight (sent before a restart, not delivered until
// dupSlack before its kill) at some fault, or was retried after a 2xx
// call the connector never got the answer of (retriedAfter2xx).
func verdict(rec *record, dead map[string]bool, faults []faultRun) result {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	r := result{sent: len(rec.order), unknown: len(rec.unknown), byFault: make([][]time.Duration, len(faults))}
	if r.unknown > 0 {
		r.errors = append(r.errors, fmt.Sprintf("%d calls for messages never sent, such as %+v", r.unknown, rec.unknown[0]))
	}
	var lost, unexplained []string
	for _, m := range rec.order {
		first, delivered := m.delivered()
		switch {
		case m.accepted():
			r.accepted++
		case m.status == 0:
			r.unanswered++
		default:
			r.refused++
			if r.refusedBy == nil {
				r.refusedBy = map[string]int{}
			}
			r.refusedBy[strings.TrimSpace(fmt.Sprintf("%d %s", m.status, m.cause))]++
		}
		r.calls += len(m.calls)
		expected := m.sent.Add(m.delay)
		for _, c := range m.calls {
			if c.status/100 != 2 {
				r.failedCalls++
			}
			// When it was due: its delay after the requeue, or after the
			// call before it (fixed backoff).
			late := c.at.Sub(expected)
			r.noteLate(lateCall{m, c, late})
			expected = c.at.Add(m.delay)
			// A call in flight at a fault was due a little before it.
			if i := faultBefore(faults, c.at.Add(-late).Add(dupSlack)); i >= 0 {
				r.byFault[i] = append(r.byFault[i], late)
			} else {
				r.baseline = append(r.baseline, late)
			}
		}
		isDead := dead[m.id]
		if !m.accepted() {
			if delivered || isDead {
				r.unacceptedDelivered++
			}
			continue
		}
		switch {
		case delivered && isDead:
			r.both++
			r.delivered++
		case delivered:
			r.delivered++
		case isDead:
			r.deadLettered++
		default:
			lost = append(lost, m.id)
		}
		inFlight := false
		for _, f := range faults {
			if m.sent.Before(f.restarted) && (!delivered || !first.Before(f.at.Add(-dupSlack))) {
				inFlight = true
			}
		}
		if inFlight {
			r.inFlight++
		}
		if n := m.deliveries(); n > 1 {
			r.dupMessages++
			r.dupCalls += n - 1
			switch {
			case inFlight:
			case retriedAfter2xx(m):
				// The mailbox counted a 2xx call as failed: its answer
				// did not reach the connector within upstream_timeout.
				r.dupUnanswered++
			default:
				unexplained = append(unexplained, m.id)
			}
		}
	}
	if len(lost) > 0 {
		r.errors = append(r.errors, fmt.Sprintf("%d accepted messages lost (neither delivered nor dead letters), such as %v", len(lost), lost[:min(5, len(lost))]))
	}
	if len(unexplained) > 0 {
		r.errors = append(r.errors, fmt.Sprintf("%d messages delivered more than once though in flight at no fault, such as %v", len(unexplained), unexplained[:min(5, len(unexplained))]))
	}
	return r
}

// lateCall is a call and how late it came.
type lateCall struct {
	m    *message
	c    call
	late time.Duration
}

// noteLate keeps the latest calls.
func (r *result) noteLate(l lateCall) {
	const keep = 5
	i, _ := slices.BinarySearchFunc(r.latest, l, func(a, b lateCall) int { return cmp.Compare(b.late, a.late) })
	if i < keep {
		r.latest = slices.Insert(r.latest, i, l)[:min(keep, len(r.latest)+1)]
	}
}

// retriedAfter2xx reports whether each 2xx call after the first has a
// higher X-Retries than the 2xx call before it: the mailbox saw the
// earlier one fail (no answer within upstream_timeout, a broken
// connection) and retried the message, rather than delivering the same
// attempt again after a crash.
func retriedAfter2xx(m *message) bool {
	prev := -1
	for _, c := range m.calls {
		if c.status/100 != 2 {
			continue
		}
		var n int
		if _, err := fmt.Sscan(c.retries, &n); err != nil || n <= prev {
			return false
		}
		prev = n
	}
	return true
}

// faultBefore is the index of the last fault at or before t, or -1.
func faultBefore(faults []faultRun, t time.Time) int {
	i := -1
	for j, f := range faults {
		if !f.at.After(t) {
			i = j
		}
	}
	return i
}

// figures are the run's figures as Markdown.
func (r result) figures(sc scenario, s settings, start, loadEnd, settled time.Time, faults []faultRun, skipped int64, mem *memory) string {
	var b strings.Builder
	form := "short form"
	if s.duration > 0 {
		form = "long form, " + s.duration.String()
	}
	fmt.Fprintf(&b, "### %s (%s, %s, %.0f requeues/s, upstream_timeout %s)\n\n", sc.name, form, time.Now().UTC().Format("2006-01-02"), s.rate, s.upstreamTimeout)
	fmt.Fprintf(&b, "- load %s, %d requeues sent: %d accepted (202), %d refused, %d unanswered; %d not sent (%d unanswered at once)\n",
		loadEnd.Sub(start).Round(time.Second), r.sent, r.accepted, r.refused, r.unanswered, skipped, maxInflight)
	if len(r.refusedBy) > 0 {
		var by []string
		for _, k := range slices.Sorted(maps.Keys(r.refusedBy)) {
			by = append(by, fmt.Sprintf("%s: %d", k, r.refusedBy[k]))
		}
		fmt.Fprintf(&b, "- refused, by answer and cause: %s\n", strings.Join(by, "; "))
	}
	fmt.Fprintf(&b, "- accepted: %d delivered (2xx), %d dead letters, %d both, lost %d; settled %s after the load stopped\n",
		r.delivered, r.deadLettered, r.both, r.accepted-r.delivered-r.deadLettered, settled.Sub(loadEnd).Round(time.Second))
	fmt.Fprintf(&b, "- %d calls, %d failed; delivered more than once: %d messages (%d extra calls), bound: %d in flight at a fault; %d more at no fault, retried after a 2xx call whose answer was lost; %d not accepted but delivered or dead letters\n",
		r.calls, r.failedCalls, r.dupMessages-r.dupUnanswered, r.dupCalls, r.inFlight, r.dupUnanswered, r.unacceptedDelivered)
	fmt.Fprintf(&b, "\n| fault | at | restarted after | requeue accepted after | delivery after | calls due in its window | late p50 | late p99 | late max |\n")
	fmt.Fprintf(&b, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	{
		late := slices.Clone(r.baseline)
		slices.Sort(late)
		fmt.Fprintf(&b, "| none (calls due before the first fault) | | | | | %d | %s | %s | %s |\n", len(late), quantile(late, 0.5), quantile(late, 0.99), quantile(late, 1))
	}
	for i, f := range faults {
		ms := func(t time.Time) string {
			if t.IsZero() {
				return "-"
			}
			return t.Sub(f.at).Round(10 * time.Millisecond).String()
		}
		late := slices.Clone(r.byFault[i])
		slices.Sort(late)
		fmt.Fprintf(&b, "| %s | +%s | %s | %s | %s | %d | %s | %s | %s |\n", f.name, f.at.Sub(start).Round(time.Second),
			ms(f.restarted), ms(f.accepted), ms(f.delivered), len(late), quantile(late, 0.5), quantile(late, 0.99), quantile(late, 1))
	}
	if s.duration > 0 {
		// The long form: figures per kind of fault.
		fmt.Fprintf(&b, "\n| fault | count | restarted after (max) | accepted after (max) | delivery after (max) | late p99 | late max |\n| --- | --- | --- | --- | --- | --- | --- |\n")
		for _, name := range sc.faults {
			var n int
			var rs, as, ds time.Duration
			var late []time.Duration
			for i, f := range faults {
				if f.name != name || f.err != nil {
					continue
				}
				n++
				rs, as, ds = max(rs, f.restarted.Sub(f.at)), max(as, f.accepted.Sub(f.at)), max(ds, f.delivered.Sub(f.at))
				late = append(late, r.byFault[i]...)
			}
			slices.Sort(late)
			fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s | %s |\n", name, n, rs.Round(10*time.Millisecond),
				as.Round(10*time.Millisecond), ds.Round(10*time.Millisecond), quantile(late, 0.99), quantile(late, 1))
		}
	}
	fmt.Fprintf(&b, "\nThe latest calls (id, when due, late by, the message's calls as X-Retries:status@time):\n\n")
	for _, l := range r.latest {
		var h []string
		for _, c := range l.m.calls {
			h = append(h, fmt.Sprintf("%s:%d@%s", c.retries, c.status, c.at.Format("15:04:05.000")))
		}
		fmt.Fprintf(&b, "- %s due %s, late %s: sent %s, delay %s; %s\n", l.m.id, l.c.at.Add(-l.late).Format("15:04:05.000"),
			l.late.Round(10*time.Millisecond), l.m.sent.Format("15:04:05.000"), l.m.delay, strings.Join(h, " "))
	}
	fmt.Fprintf(&b, "\nMemory (RSS, MiB, sampled every %s: first, max, last): %s\n", mem.every, mem)
	if t := mem.table(); t != "" {
		fmt.Fprintf(&b, "\n%s", t)
	}
	return b.String()
}

// quantile is the p quantile of sorted, or "-" when it is empty.
func quantile(sorted []time.Duration, p float64) string {
	if len(sorted) == 0 {
		return "-"
	}
	return sorted[min(len(sorted)-1, int(p*float64(len(sorted))))].Round(10 * time.Millisecond).String()
}

// memory samples the resident memory of the bed's programs.
type memory struct {
	every time.Duration
	done  chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	first map[string]int64
	max   map[string]int64
	last  map[string]int64
	// series is a sample every seriesEvery, for a long run's figures:
	// whether memory levels off or keeps growing.
	start  time.Time
	series []map[string]int64
}

// seriesEvery is the time between two samples of memory.series.
const seriesEvery = 10 * time.Minute

// programs are sampled's keys, in the order figures lists them.
var programs = []string{"mailbox-fn", "connector", "nats-server", "nats-streaming-server", "gateway", "mailbox serve"}

// sampled are the programs memory samples, by the executables'.
func sampled() map[string]string {
	return map[string]string{
		"mailbox-fn":            binaries.Functions[bed.Mailbox],
		"connector":             binaries.Connector,
		"nats-server":           binaries.NATSServer,
		"nats-streaming-server": binaries.StreamingServer,
		"gateway":               binaries.Gateway,
		"mailbox serve":         binaries.Serve,
	}
}

func startMemory(every time.Duration) *memory {
	m := &memory{every: every, done: make(chan struct{}), first: map[string]int64{}, max: map[string]int64{}, last: map[string]int64{}, start: time.Now()}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			m.sample()
			select {
			case <-m.done:
				return
			case <-tick.C:
			}
		}
	}()
	return m
}

func (m *memory) sample() {
	defer func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if time.Since(m.start) >= time.Duration(len(m.series))*seriesEvery {
			m.series = append(m.series, maps.Clone(m.last))
		}
	}()
	for name, exe := range sampled() {
		ps, err := processes(exe)
		if err != nil || len(ps) == 0 {
			continue
		}
		var rss int64
		for _, p := range ps {
			rss += p.rss
		}
		m.mu.Lock()
		if _, ok := m.first[name]; !ok {
			m.first[name] = rss
		}
		m.max[name] = max(m.max[name], rss)
		m.last[name] = rss
		m.mu.Unlock()
	}
}

func (m *memory) stop() {
	close(m.done)
	m.wg.Wait()
}

func (m *memory) String() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var parts []string
	for _, name := range programs {
		if _, ok := m.first[name]; ok {
			parts = append(parts, fmt.Sprintf("%s %d, %d, %d", name, m.first[name]>>20, m.max[name]>>20, m.last[name]>>20))
		}
	}
	return strings.Join(parts, "; ")
}

// table is the series as a Markdown table, a row per program and a column
// per sample; empty when the run was too short for two samples.
func (m *memory) table() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.series) < 2 {
		return ""
	}
	var b strings.Builder
	b.WriteString("| RSS, MiB |")
	for i := range m.series {
		fmt.Fprintf(&b, " %s |", time.Duration(i)*seriesEvery)
	}
	b.WriteString("\n| --- |" + strings.Repeat(" --- |", len(m.series)) + "\n")
	for _, name := range programs {
		if _, ok := m.first[name]; !ok {
			continue
		}
		fmt.Fprintf(&b, "| %s |", name)
		for _, s := range m.series {
			fmt.Fprintf(&b, " %d |", s[name]>>20)
		}
		b.WriteString("\n")
	}
	return b.String()
}
