package deadletter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/delivery"
	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/names"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/status"
)

// Options configure a Store.
type Options struct {
	// Queue keeps the dead letters and takes replayed messages. Required.
	Queue queue.Queue
	// Retention is how long a dead letter is kept after it died; 0 keeps
	// dead letters until they are removed. Defaults to 0.
	Retention time.Duration
	// Limit is the most dead letters kept per function; past it the
	// function's oldest are removed, so that one function's flood never
	// pushes out another's. Required, > 0.
	Limit int
	// ReplayRate bounds how many dead letters a bulk replay puts back
	// per second. Defaults to 50.
	ReplayRate float64
	// Allow refuses a replay the mailbox may not make, given the
	// message's function and dead-letter function (auth.Targets'
	// CheckMessage, as for a requeue); nil allows every one.
	Allow func(function, deadLetterFunction string) error
	// Status records where replayed messages are; nil records nothing.
	Status *status.Recorder
	// SweepEvery is how often retention is applied (the limit is applied
	// as soon as it is passed). Defaults to a tenth of Retention, between
	// 100ms and 30s: a dead letter outlives its retention by at most a
	// tenth.
	SweepEvery time.Duration
	// Registerer receives the store's metrics. Required.
	Registerer prometheus.Registerer
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now is the clock. Defaults to time.Now.
	Now func() time.Time
}

// Errors of the operations.
var (
	// ErrNotFound: no dead letter with that id is kept, and none was
	// removed recently.
	ErrNotFound = errors.New("no such dead letter")
	// ErrNotReplayable: the dead letter's bytes are not a message
	// (reason malformed); it can only be read and purged.
	ErrNotReplayable = errors.New("dead letter is not a message that can be replayed")
	// ErrRefused: the mailbox may not target the dead letter's function.
	ErrRefused = errors.New("target refused")
)

// Store answers for the dead letters of one queue. Run follows the log;
// every operation first catches up with the log as it is when called, so
// that an answer reflects every write acknowledged before it.
type Store struct {
	o     Options
	q     queue.Queue
	log   *slog.Logger
	token string

	mu      sync.Mutex
	x       *index
	advance chan struct{} // closed and replaced whenever x.applied grows
	jobs    *jobs
	// full is signalled when the index holds more than Limit entries.
	full chan struct{}
	// running is closed once Run has started; runCtx is Run's. The first
	// sync closes follow (once) for Run to start following the log.
	running    chan struct{}
	runCtx     context.Context
	follow     chan struct{}
	followOnce sync.Once
	// stopFollow ends the follow under way; reset asks followLog to
	// rebuild the index before following again, set by sync when the
	// log's newest record is older than the index (the log was reset).
	// rebuilds counts the rebuilds.
	stopFollow context.CancelFunc
	reset      bool
	rebuilds   int

	m *metrics
}

type metrics struct {
	removed  *prometheus.CounterVec
	function *names.Bounded
}

// New returns a Store; call Run to start it.
func New(o Options) (*Store, error) {
	var errs []error
	if o.Queue == nil {
		errs = append(errs, errors.New("Queue is required"))
	}
	if o.Limit <= 0 {
		errs = append(errs, fmt.Errorf("Limit is %d, must be > 0", o.Limit))
	}
	if o.Retention < 0 {
		errs = append(errs, fmt.Errorf("Retention is %s, must be >= 0", o.Retention))
	}
	if o.Registerer == nil {
		errs = append(errs, errors.New("Registerer is required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("deadletter: invalid options: %w", err)
	}
	if o.ReplayRate <= 0 {
		o.ReplayRate = 50
	}
	if o.SweepEvery <= 0 {
		o.SweepEvery = 30 * time.Second
		if o.Retention > 0 {
			o.SweepEvery = min(max(o.Retention/10, 100*time.Millisecond), 30*time.Second)
		}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Store{
		o: o, q: o.Queue, log: o.Logger, token: nuid.Next(),
		x:       newIndex(o.Limit),
		advance: make(chan struct{}),
		full:    make(chan struct{}, 1),
		running: make(chan struct{}),
		follow:  make(chan struct{}),
		jobs:    newJobs(),
	}
	var err error
	if s.m, err = newMetrics(o.Registerer, s); err != nil {
		return nil, fmt.Errorf("deadletter: registering metrics: %w", err)
	}
	return s, nil
}

func newMetrics(reg prometheus.Registerer, s *Store) (*metrics, error) {
	m := &metrics{
		removed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailbox_dead_letters_removed_total",
			Help: "Dead letters removed, by function, reason and cause: replayed, purged, expired (past dead_letter_max_age) or limit (the oldest past dead_letter_limit). Counted once, by the process whose removal came first.",
		}, []string{"function", "reason", "cause"}),
		function: names.NewBounded(names.MaxLabels),
	}
	err := errors.Join(reg.Register(m.removed), reg.Register(keptCollector{s}))
	return m, err
}

// keptCollector exports the index's counts at scrape time.
type keptCollector struct{ s *Store }

var keptDesc = prometheus.NewDesc("mailbox_dead_letters_kept",
	"Dead letters kept now, by function and reason, as this process's index has read them.",
	[]string{"function", "reason"}, nil)

func (keptCollector) Describe(ch chan<- *prometheus.Desc) { ch <- keptDesc }

func (c keptCollector) Collect(ch chan<- prometheus.Metric) {
	// Functions past the label bound share one label, so add up first.
	sums := map[countKey]int{}
	for _, n := range c.s.Counts() {
		sums[countKey{c.s.m.function.Label(n.Function), n.Reason}] += n.Count
	}
	for k, n := range sums {
		ch <- prometheus.MustNewConstMetric(keptDesc, prometheus.GaugeValue, float64(n), k.function, k.reason)
	}
}

// Run applies retention and the limit, and serves the operations, until
// ctx ends. It returns nil then; it never gives up on an unreachable
// broker. The log is followed from the first operation or sweep on (a
// sweep comes SweepEvery after the start), not at once: a process that
// starts should not add its reading of the log to its start-up, and on
// NATS Streaming subscribing while the connector's durable
// subscriptions start makes the server deliver a message published then
// twice, or late.
func (s *Store) Run(ctx context.Context) error {
	s.mu.Lock()
	s.runCtx = ctx
	s.mu.Unlock()
	close(s.running)
	var wg sync.WaitGroup
	wg.Go(func() { s.keep(ctx) })
	select {
	case <-ctx.Done():
	case <-s.follow:
		wg.Go(func() { s.followLog(ctx) })
	}
	wg.Wait()
	s.jobs.wait()
	return nil
}

// startFollowing has Run follow the log, if it is running.
func (s *Store) startFollowing() error {
	select {
	case <-s.running:
	default:
		return ErrNotRunning
	}
	s.followOnce.Do(func() { close(s.follow) })
	return nil
}

// followLog reads the log into the index, again from where it stopped
// after each loss of the broker.
func (s *Store) followLog(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		followCtx, stop := context.WithCancel(ctx)
		s.mu.Lock()
		after := s.x.applied
		s.stopFollow = stop
		if s.reset {
			// Asked for between two follows.
			stop()
		}
		s.mu.Unlock()
		err := s.q.FollowDeadLetters(followCtx, after, s.apply)
		stop()
		if ctx.Err() != nil {
			return
		}
		s.mu.Lock()
		reset := s.reset || errors.Is(err, queue.ErrLogReset)
		s.mu.Unlock()
		if reset {
			s.rebuild(err)
			continue
		}
		s.log.Debug("dead-letter log: following again", "after", after, "error", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		s.mu.Lock()
		progressed := s.x.applied > after
		s.mu.Unlock()
		if progressed {
			backoff = 100 * time.Millisecond
		} else {
			backoff = min(2*backoff, 5*time.Second)
		}
	}
}

// rebuild forgets what the index read, to read the log again from its
// start: the log was reset under it (a NATS Streaming store on memory,
// restarted), so the dead letters it holds are gone and new ones have
// seqs it has passed.
func (s *Store) rebuild(cause error) {
	s.mu.Lock()
	s.log.Warn("the dead-letter log no longer holds what the index read (the broker's store was reset, or its newest records expired): rebuilding the index from the log", "read_up_to", s.x.applied, "cause", cause)
	s.x = newIndex(s.o.Limit)
	s.reset = false
	s.rebuilds++
	close(s.advance)
	s.advance = make(chan struct{})
	s.mu.Unlock()
}

func (s *Store) apply(r queue.Record) {
	s.mu.Lock()
	removed := s.x.apply(r)
	over := s.x.overLimit()
	close(s.advance)
	s.advance = make(chan struct{})
	s.mu.Unlock()
	if removed != nil && r.Removal.By == s.token {
		s.m.removed.WithLabelValues(s.m.function.Label(removed.Function), removed.Reason, r.Removal.Cause).Inc()
	}
	if over {
		select {
		case s.full <- struct{}{}:
		default:
		}
	}
}

// sync waits until the index has read the log up to its newest record.
func (s *Store) sync(ctx context.Context) error {
	if err := s.startFollowing(); err != nil {
		return err
	}
	// read is what the index had read before the head was asked for: the
	// follower may read newer records while the head is on its way.
	s.mu.Lock()
	read := s.x.applied
	s.mu.Unlock()
	head, err := s.q.LastDeadLetterSeq(ctx)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if head < read && s.x.applied >= read {
		// The log's newest record is older than one the index had read
		// (and the index was not rebuilt meanwhile): the log was reset
		// (or, on JetStream, its newest records expired). Have the
		// follower rebuild the index, and wait for that.
		s.reset = true
		if s.stopFollow != nil {
			s.stopFollow()
		}
	}
	rebuilds := s.rebuilds
	s.mu.Unlock()
	for {
		s.mu.Lock()
		applied, reset, rebuilt, advance := s.x.applied, s.reset, s.rebuilds > rebuilds, s.advance
		s.mu.Unlock()
		if applied >= head && (!reset || rebuilt) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: the dead-letter index is at %d of %d: %v", queue.ErrUnavailable, applied, head, ctx.Err())
		case <-advance:
		}
	}
}

// keep applies retention every SweepEvery, and the limit as soon as it is
// passed.
func (s *Store) keep(ctx context.Context) {
	t := time.NewTicker(s.o.SweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.full:
		}
		if err := s.sweep(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("dead letters: cannot apply retention and limit now", "error", err)
		}
	}
}

// sweepTimeout bounds one sweep; the next one takes up what is left.
const sweepTimeout = 30 * time.Second

// sweep removes expired dead letters and the oldest past the limit. It
// acts only on an index that has read the whole log: a partial one could
// count dead letters whose removal it has not read yet.
func (s *Store) sweep(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, sweepTimeout)
	defer cancel()
	if err := s.sync(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	expired, over := s.x.overdue(s.o.Now(), s.o.Retention, s.o.Limit)
	s.mu.Unlock()
	if len(expired) > 0 {
		s.log.Info("dead letters: removing those past retention", "count", len(expired), "retention", s.o.Retention)
	}
	if len(over) > 0 {
		s.log.Warn("dead letters: a function's limit reached, removing its oldest", "count", len(over), "limit", s.o.Limit, "function", over[0].Function)
	}
	for _, batch := range []struct {
		entries []*Entry
		cause   string
	}{{expired, queue.RemovedExpired}, {over, queue.RemovedLimit}} {
		for _, e := range batch.entries {
			if err := s.remove(ctx, *e, batch.cause); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *Store) remove(ctx context.Context, e Entry, cause string) error {
	return s.q.RemoveDeadLetter(ctx, queue.Removal{Seq: e.Seq, ID: e.ID, Cause: cause, By: s.token})
}

// Counts are the dead letters kept, by function and reason, largest
// first, as far as the index has read the log.
func (s *Store) Counts() []Count {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.x.countList()
}

// Page is one page of a list.
type Page struct {
	Items []Entry
	// Next is the cursor of the next page, 0 on the last.
	Next uint64
	// Total is how many dead letters match the filter.
	Total int
	// Counts are all the dead letters kept, by function and reason.
	Counts []Count
}

// List returns up to limit dead letters matching f, newest first, older
// than the cursor before (0: from the newest).
func (s *Store) List(ctx context.Context, f Filter, before uint64, limit int) (Page, error) {
	if err := s.sync(ctx); err != nil {
		return Page{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	items, next, total := s.x.page(f, before, limit)
	return Page{Items: items, Next: next, Total: total, Counts: s.x.countList()}, nil
}

// Get returns the newest dead letter kept with id, and the stored
// message: nil when its bytes are not an envelope (the Entry says why).
func (s *Store) Get(ctx context.Context, id string) (Entry, *envelope.Envelope, error) {
	e, err := s.find(ctx, id)
	if err != nil {
		return Entry{}, nil, err
	}
	r, err := s.q.ReadDeadLetter(ctx, e.Seq)
	if errors.Is(err, queue.ErrNoDeadLetter) {
		return Entry{}, nil, fmt.Errorf("%w: %s (the broker no longer keeps it)", ErrNotFound, id)
	}
	if err != nil {
		return Entry{}, nil, err
	}
	env, err := envelope.Decode(r.Data)
	if err != nil {
		return e, &envelope.Envelope{ID: e.ID, Reason: e.Reason, LastError: err.Error(), DeadAt: e.DeadAt, Body: r.Data}, nil
	}
	return e, env, nil
}

func (s *Store) find(ctx context.Context, id string) (Entry, error) {
	if err := s.sync(ctx); err != nil {
		return Entry{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.x.byIDOf(id); ok {
		return *e, nil
	}
	return Entry{}, fmt.Errorf("%w: %s", ErrNotFound, id)
}

// Outcome is the result of a replay or a removal.
type Outcome struct {
	ID       string `json:"id"`
	Function string `json:"function,omitempty"`
	// Status is "replayed" or "purged".
	Status string `json:"status"`
	// Repeated is true when the dead letter had already gone this way:
	// the operation was repeated, after a timeout for example, and did
	// nothing more.
	Repeated bool `json:"repeated,omitempty"`
	// Retries and DueAt are a replayed message's.
	Retries int       `json:"retries"`
	DueAt   time.Time `json:"due_at,omitzero"`
}

// Replay puts the newest dead letter with id back into the queue, due at
// once with retries attempts made (see delivery.Replay), then removes it.
// Repeating a replay that went through answers Repeated.
func (s *Store) Replay(ctx context.Context, id string, retries int) (Outcome, error) {
	e, err := s.live(ctx, id, queue.RemovedReplayed)
	if err != nil || e == nil {
		return Outcome{ID: id, Status: queue.RemovedReplayed, Repeated: err == nil}, err
	}
	return s.replay(ctx, *e, retries)
}

// Remove deletes the newest dead letter with id. Repeating it answers
// Repeated.
func (s *Store) Remove(ctx context.Context, id string) (Outcome, error) {
	e, err := s.live(ctx, id, queue.RemovedPurged)
	if err != nil || e == nil {
		return Outcome{ID: id, Status: queue.RemovedPurged, Repeated: err == nil}, err
	}
	if err := s.remove(ctx, *e, queue.RemovedPurged); err != nil {
		return Outcome{}, err
	}
	return Outcome{ID: id, Function: e.Function, Status: queue.RemovedPurged}, nil
}

// live returns the newest kept dead letter with id, or nil when the last
// one went with cause, or ErrNotFound (saying how it went otherwise).
func (s *Store) live(ctx context.Context, id, cause string) (*Entry, error) {
	if err := s.sync(ctx); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.x.byIDOf(id); ok {
		c := *e
		return &c, nil
	}
	if g, ok := s.x.gone[id]; ok {
		if g.Cause == cause {
			return nil, nil
		}
		return nil, fmt.Errorf("%w: %s (it was %s)", ErrNotFound, id, g.Cause)
	}
	return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
}

func (s *Store) replay(ctx context.Context, e Entry, retries int) (Outcome, error) {
	r, err := s.q.ReadDeadLetter(ctx, e.Seq)
	if errors.Is(err, queue.ErrNoDeadLetter) {
		return Outcome{}, fmt.Errorf("%w: %s (the broker no longer keeps it)", ErrNotFound, e.ID)
	}
	if err != nil {
		return Outcome{}, err
	}
	dead, err := envelope.Decode(r.Data)
	if err != nil {
		return Outcome{}, fmt.Errorf("%w: %s: %v", ErrNotReplayable, e.ID, err)
	}
	if dead.ID != e.ID {
		// The broker's log was reset under the index: another message
		// now has this seq.
		return Outcome{}, fmt.Errorf("%w: %s (seq %d now holds %s)", ErrNotFound, e.ID, e.Seq, dead.ID)
	}
	if err := s.allow(dead); err != nil {
		return Outcome{}, err
	}
	now := s.o.Now().UTC()
	next := delivery.Replay(dead, retries, now)
	// Schedule first: a failure between the two leaves the dead letter
	// kept, to be replayed again, never lost. A repeat is this replay
	// stored by an earlier try.
	if err := s.q.Schedule(ctx, next); err != nil && !errors.Is(err, queue.ErrRepeat) {
		return Outcome{}, err
	}
	if err := s.remove(ctx, e, queue.RemovedReplayed); err != nil {
		return Outcome{}, err
	}
	if s.o.Status != nil {
		s.o.Status.Record(status.Of(next, status.Waiting, now))
	}
	s.log.Info("dead letter replayed", "id", next.ID, "function", next.Function, "replays", next.Replays, "retries", next.Retries)
	return Outcome{ID: next.ID, Function: next.Function, Status: queue.RemovedReplayed, Retries: next.Retries, DueAt: next.DueAt}, nil
}

// allow refuses a replay the mailbox must not make (Options.Allow). A
// routed dead letter is never routed again, so its dead-letter function
// does not count.
func (s *Store) allow(e *envelope.Envelope) error {
	if s.o.Allow == nil {
		return nil
	}
	deadLetterFunction := e.DeadLetterFunction
	if e.Kind != envelope.KindMessage {
		deadLetterFunction = ""
	}
	if err := s.o.Allow(e.Function, deadLetterFunction); err != nil {
		return fmt.Errorf("%w: %v", ErrRefused, err)
	}
	return nil
}
