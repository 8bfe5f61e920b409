// Package jetstream implements queue.Queue on NATS JetStream, using what
// the server offers instead of rebuilding it:
//
//   - A work stream (file storage, work-queue retention, AllowMsgSchedules)
//     holds waiting messages as per-message schedules on
//     <prefix>.schedule.<key>, where key names the message's function, id,
//     life and attempt (messageKey). The server fires each one, once,
//     onto <prefix>.due.<key> in the same stream and purges the schedule.
//   - A durable pull consumer on <prefix>.due.> (and <prefix>.due, where
//     earlier versions put due messages), shared by connector replicas,
//     with explicit acks and a 10 s ack wait; a connector reports each
//     message it holds in progress until it acknowledges it (consume.go).
//   - A dead-letter stream on <prefix>.deadletter: a log of dead letters
//     and of removals, each removal followed by the delete of the record
//     it removes (deadletters.go).
//   - A status stream on <prefix>.status.<function>.<id> keeping the last
//     status of each message, each expiring on its own (per-message TTL). A process
//     that counts waiting messages follows it with an ordered consumer.
//   - The key is also the de-duplication id (Nats-Msg-Id), and a message
//     is stored only if its subject holds none (Nats-Expected-Last-
//     Subject-Sequence 0): a requeue repeated after a timeout is stored
//     once, inside the de-duplication window and after it, and Schedule
//     says so (queue.ErrRepeat) instead of storing or replacing. Two
//     functions may use the same id.
//
// The server's scheduler fires up to about 250 ms late, so a message is
// scheduled scheduleLead early and the consumer holds the last stretch on
// a local timer.
package jetstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/status"
)

// scheduleLead is how early a message is scheduled before it is due: more
// than the server scheduler's lateness, so that the consumer, not the
// scheduler, decides the delivery time.
const scheduleLead = 400 * time.Millisecond

// headerRoom is left in a NATS message for the headers around the
// envelope.
const headerRoom = 512

// prefetch is how many messages a consumer holds beyond the MaxInflight
// being delivered: those fired early and waiting for their due time, or
// waiting for a delivery slot. Each is reported in progress while held.
const prefetch = 512

// Options configure the backend. Options.URL may list several servers,
// comma-separated.
type Options struct {
	queue.Options
	// Stream holding waiting messages. Defaults to mailbox.
	Stream string
	// DeadLetterStream holds dead letters. Defaults to <Stream>-deadletter.
	DeadLetterStream string
	// StatusStream holds the latest status of each message. Defaults to
	// <Stream>-status.
	StatusStream string
	// Consumer is the durable consumer shared by connectors. Defaults to
	// connector.
	Consumer string
	// Replicas of each stream: 1, or 3 or 5 on a cluster. Defaults to 1.
	Replicas int
	// DuplicateWindow is how long the work and dead-letter streams
	// remember a stored message's id (Nats-Msg-Id). A repeat is refused
	// after it too, as long as the first is still waiting. Defaults to
	// 2m, or longer when HandlerTimeout asks (minDuplicateWindow: 148 s
	// with the connector's default of 65 s), so that a retry or dead
	// letter stored by a connector that died before its ack, and stored
	// again by the connector that gets the message next, is kept once; at
	// least 100ms.
	DuplicateWindow time.Duration
	// DeadLetterMaxAge is the dead-letter retention. The mailbox removes
	// older dead letters itself; a removal expires (Nats-TTL) this long
	// after it was stored, and the stream drops any record
	// DeadLetterMaxAge + 24h old, as a backstop. Zero keeps dead letters,
	// and removals, until they are removed.
	DeadLetterMaxAge time.Duration
	// StatusIndexLimit bounds the waiting and in-flight messages a process
	// that answers Waiting keeps in memory to count them; past it the one
	// updated longest ago is forgotten. Defaults to 1,000,000, as many
	// statuses as the status stream keeps: about 225 bytes each, 215 MiB
	// at most (measured as status.TestIndexMemory does, with 1,000,000
	// ids).
	StatusIndexLimit int
	// StatusesPerFunction bounds the statuses the status stream keeps for
	// one function name, its newest, so that one function's flood of
	// statuses pushes out its own and not another's (the stream's own
	// limit drops the oldest of any function). Defaults to 100,000.
	StatusesPerFunction int
}

// Queue is a JetStream backend. The NATS connection reconnects by itself;
// streams and the consumer are created or updated once connected.
type Queue struct {
	o       Options
	log     *slog.Logger
	nc      *nats.Conn
	js      jetstream.JetStream
	breaker *queue.Breaker // the connection, to break when a write is stuck
	ready   atomic.Bool    // streams and consumer exist
	readyCh chan struct{}  // closed once ready
	// statusStream and deadLetterStream are set before ready.
	statusStream     jetstream.Stream
	deadLetterStream jetstream.Stream
	deadLetters      *prometheus.CounterVec
	// index counts waiting messages per function from the status stream,
	// started by the first Waiting.
	index     *status.Index
	indexOnce sync.Once
	indexDone chan struct{} // closed when the index stops following
	// written counts this process's status writes per function name
	// since it last trimmed that function's statuses (trim).
	writtenMu sync.Mutex
	written   map[string]int
	ctx       context.Context // ends at Close
	cancel    context.CancelFunc
	done      chan struct{}
	// refusedAt is when a write was last refused for want of storage
	// (UnixNano, 0 for never): rearmLoop then looks for schedules the
	// server fired and could not store (rearm.go). rearmDone is closed
	// when it stops.
	refusedAt atomic.Int64
	rearmDone chan struct{}
}

// Open validates o, connects in the background and returns at once, so a
// process can start while NATS is down.
func Open(o Options) (*Queue, error) {
	common, err := o.Options.WithDefaults()
	if err != nil {
		return nil, err
	}
	o.Options = common
	if o.Stream == "" {
		o.Stream = "mailbox"
	}
	if o.DeadLetterStream == "" {
		o.DeadLetterStream = o.Stream + "-deadletter"
	}
	if o.StatusStream == "" {
		o.StatusStream = o.Stream + "-status"
	}
	if o.Consumer == "" {
		o.Consumer = "connector"
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.DuplicateWindow <= 0 {
		o.DuplicateWindow = max(2*time.Minute, minDuplicateWindow(o.HandlerTimeout))
	}
	if o.StatusIndexLimit <= 0 {
		o.StatusIndexLimit = statusMaxMsgs
	}
	if o.StatusesPerFunction <= 0 {
		o.StatusesPerFunction = 100_000
	}
	deadLetters, err := o.DeadLetterCounter()
	if err != nil {
		return nil, err
	}
	q := &Queue{
		o:           o,
		breaker:     &queue.Breaker{},
		log:         o.Logger.With("component", "jetstream"),
		readyCh:     make(chan struct{}),
		done:        make(chan struct{}),
		rearmDone:   make(chan struct{}),
		deadLetters: deadLetters,
		index:       status.NewIndex(o.StatusIndexLimit, true),
		written:     map[string]int{},
	}
	opts := []nats.Option{
		nats.Name("mailbox"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		// A connection gone silent, to a server cut off by a partition
		// (nothing answers, nothing closes), is given up after
		// pingInterval times maxPingsOut+1 and the client moves to another
		// member; at nats.go's 2-minute interval a connector sat on a cut
		// off server, delivering nothing, for minutes (test/chaos
		// TestChaos/JetStreamCluster).
		nats.PingInterval(pingInterval),
		nats.MaxPingsOutstanding(maxPingsOut),
		// Keep trying when the server is not up yet at start.
		nats.RetryOnFailedConnect(true),
		// Fail publishes at once while disconnected instead of buffering
		// them: the API answers 503 and stores nothing.
		nats.ReconnectBufSize(-1),
		// A write to a server that stopped reading (its socket buffers
		// full) blocks every publish on the connection: the flusher gives
		// it up after PublishTimeout instead of nats.go's minute, and a
		// publish stuck behind it breaks the connection (queue.Breaker).
		nats.FlusherTimeout(o.PublishTimeout),
		nats.SetCustomDialer(q.breaker),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: closed on purpose
				q.log.Warn("disconnected from NATS", "error", err)
			}
			// Statuses stored meanwhile are read after the reconnect.
			q.index.SetSynced(false)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			q.log.Info("reconnected to NATS", "url", queue.RedactURL(nc.ConnectedUrl()))
		}),
	}
	if o.CredentialsFile != "" {
		opts = append(opts, nats.UserCredentials(o.CredentialsFile))
	}
	nc, err := nats.Connect(o.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("jetstream: connect: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	q.nc, q.js = nc, js
	q.ctx, q.cancel = context.WithCancel(context.Background())
	go q.setUp(q.ctx)
	if o.Replicas == 1 {
		go q.rearmLoop(q.ctx)
	} else {
		close(q.rearmDone)
	}
	return q, nil
}

// pingInterval and maxPingsOut bound how long a silent connection is
// kept: 15 s, and at least 10 s without an answer, as long as the
// server's own write deadline (10 s), so a live server's answer queued
// behind a large fetch on a slow link is still waited for.
const (
	pingInterval = 5 * time.Second
	maxPingsOut  = 2
)

// Subjects. legacyDueSubject is where earlier versions put due messages,
// and where schedules they stored still fire: it is still consumed.
func (q *Queue) legacyDueSubject() string          { return q.o.Prefix + ".due" }
func (q *Queue) dueSubject(key string) string      { return q.o.Prefix + ".due." + key }
func (q *Queue) scheduleSubject(key string) string { return q.o.Prefix + ".schedule." + key }
func (q *Queue) deadLetterSubject() string         { return q.o.Prefix + ".deadletter" }

// setUp creates or updates the streams, retrying until it succeeds or the
// queue closes. The consumer is the connector's business: Consume defines
// it, so a process that only stores (mailbox-fn) never changes it.
func (q *Queue) setUp(ctx context.Context) {
	defer close(q.done)
	backoff := 100 * time.Millisecond
	forming := time.Now().Add(formingGrace)
	for {
		err := q.ensure(ctx)
		if err == nil {
			q.ready.Store(true)
			close(q.readyCh)
			q.log.Info("JetStream streams ready", "stream", q.o.Stream, "dead_letter_stream", q.o.DeadLetterStream, "status_stream", q.o.StatusStream, "replicas", q.o.Replicas)
			return
		}
		if tooFewPeers(err) || errors.Is(err, context.DeadlineExceeded) {
			if time.Now().Before(forming) {
				// A fresh cluster's meta leader learns of its peers one
				// by one, and its first answers may be lost: ask again
				// soon, without alarming anybody.
				q.log.Debug("JetStream cluster still forming", "error", err)
				if !sleep(ctx, 100*time.Millisecond) {
					return
				}
				continue
			}
			if tooFewPeers(err) {
				err = fmt.Errorf("%w: the streams need %d JetStream servers up in the cluster (setting jetstream_replicas)", err, q.o.Replicas)
			}
		}
		q.log.Warn("cannot set up JetStream streams, retrying", "error", err, "retry_in", backoff)
		if !sleep(ctx, backoff) {
			return
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (q *Queue) ensure(ctx context.Context) error {
	if err := q.awaitAPI(ctx); err != nil {
		return err
	}
	// Each request is bounded on its own, and briefly: on a fresh
	// cluster the answer to a creation is sometimes lost (seen in the
	// bed, while the servers churn their route connections) though the
	// stream was created, and asking again is answered at once.
	create := func(cfg jetstream.StreamConfig) (jetstream.Stream, error) {
		rctx, cancel := context.WithTimeout(ctx, streamRequestTimeout)
		defer cancel()
		st, err := q.js.CreateOrUpdateStream(rctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("stream %s: %w", cfg.Name, err)
		}
		return st, nil
	}
	_, err := create(jetstream.StreamConfig{
		Name:     q.o.Stream,
		Subjects: []string{q.scheduleSubject(">"), q.dueSubject(">"), q.legacyDueSubject()},
		Storage:  jetstream.FileStorage,
		// A message is removed once the connector acknowledges it; a
		// schedule once it has fired.
		Retention:         jetstream.WorkQueuePolicy,
		Replicas:          q.o.Replicas,
		AllowMsgSchedules: true,
		AllowRollup:       true, // required by schedules
		Duplicates:        q.o.DuplicateWindow,
		// No count or size limit: the server refuses DiscardNew on a
		// stream with schedules ("message scheduling cannot use discard
		// new"), and DiscardOld would drop waiting messages. Reserve
		// bounds new messages instead; the account's storage limit is the
		// broker's backstop, past which it refuses every write.
	})
	if err != nil {
		return err
	}
	if q.deadLetterStream, err = create(q.deadLetterStreamConfig()); err != nil {
		return err
	}
	q.statusStream, err = create(q.statusStreamConfig())
	return err
}

// streamRequestTimeout bounds one request to create or update a stream.
const streamRequestTimeout = 3 * time.Second

// awaitAPI asks for the account's JetStream information, each request
// bounded by apiProbeTimeout, until the API answers, for up to 10 s. The
// servers of a fresh cluster answer no JetStream request until they have
// elected their meta leader, and a stream creation sent before that
// waited out its whole 10 s timeout before it was tried again.
func (q *Queue) awaitAPI(ctx context.Context) error {
	give := time.Now().Add(10 * time.Second)
	for {
		rctx, cancel := context.WithTimeout(ctx, apiProbeTimeout)
		_, err := q.js.AccountInfo(rctx)
		cancel()
		if err == nil {
			return nil
		}
		var apiErr *jetstream.APIError
		unanswered := errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
			errors.As(err, &apiErr) && apiErr.Code == 503 // JetStream cluster not available yet
		if !unanswered || ctx.Err() != nil || time.Now().After(give) {
			return fmt.Errorf("JetStream API: %w", err)
		}
		q.log.Debug("JetStream API not answering yet", "error", err)
		if !sleep(ctx, 100*time.Millisecond) {
			return ctx.Err()
		}
	}
}

// apiProbeTimeout bounds one request of awaitAPI.
const apiProbeTimeout = time.Second

// formingGrace is how long after start-up a lack of peers is taken for a
// cluster still forming rather than one too small for jetstream_replicas.
const formingGrace = 10 * time.Second

// tooFewPeers reports the server's "no suitable peers for placement".
func tooFewPeers(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == 10005
}

// sleep waits d and reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// Connected reports whether the server is reachable and the streams exist.
func (q *Queue) Connected() bool { return q.ready.Load() && q.nc.IsConnected() }

// MaxPayload is the largest encoded envelope the server accepts.
func (q *Queue) MaxPayload() int {
	if mp := q.nc.MaxPayload(); mp > 0 {
		return int(mp) - headerRoom
	}
	return 1<<20 - headerRoom // NATS default until the server says otherwise
}

// Schedule stores e: as a schedule firing scheduleLead before it is due,
// or straight onto its due subject when it is nearly due. It stores
// nothing, and returns queue.ErrRepeat, when the same message (function,
// id, life, attempt and holds) is still waiting there, or was stored
// within the de-duplication window.
func (q *Queue) Schedule(ctx context.Context, e *envelope.Envelope) error {
	data, err := q.encode(e)
	if err != nil {
		return err
	}
	key := messageKey(e)
	m := nats.NewMsg(q.dueSubject(key))
	m.Data = data
	if fire := e.DueAt.Add(-scheduleLead); time.Until(fire) > 0 {
		m.Subject = q.scheduleSubject(key)
		// Written by hand: nats.go's WithScheduleAt drops the fraction of
		// the second.
		m.Header.Set(jetstream.ScheduleHeader, "@at "+fire.UTC().Format(time.RFC3339Nano))
		m.Header.Set(jetstream.ScheduleTargetHeader, q.dueSubject(key))
	}
	// Only onto an empty subject: a second schedule on a subject would
	// replace the first, and a second due message would be a second
	// delivery that Schedule did not report.
	return q.publish(ctx, m, key, jetstream.WithExpectLastSequencePerSubject(0))
}

// messageKey names one store of e, as subject tokens: its function, its
// id, its life (how many times it was replayed from the dead letters,
// so that a replayed message's stores are not taken for its earlier
// life's), its attempt (Retries) and its holds (a message put back
// without an attempt keeps its Retries; its Holds tell that store from
// the one before). Function and id are escaped (token), so that a name
// with a dot, or any byte, stays one token.
func messageKey(e *envelope.Envelope) string {
	return token(e.Function) + "." + token(e.ID) + "." + strconv.Itoa(e.Replays) + "." +
		strconv.Itoa(e.Retries) + "." + strconv.Itoa(e.Holds)
}

// token escapes s into one subject token: letters, digits, '-' and '_'
// are kept, any other byte is written ~XX (hex), and "" is "~". Distinct
// strings give distinct tokens.
func token(s string) string {
	if s == "" {
		return "~"
	}
	var b strings.Builder
	for i := range len(s) {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "~%02x", c)
	}
	return b.String()
}

// DeadLetter stores e in the dead-letter stream.
func (q *Queue) DeadLetter(ctx context.Context, e *envelope.Envelope) error {
	data, err := q.encode(e)
	if err != nil {
		return err
	}
	m := nats.NewMsg(q.deadLetterSubject())
	m.Data = data
	// A dead letter stored again within the window (a connector that
	// crashed before its ack) is kept once.
	err = q.publish(ctx, m, messageKey(e)+".dead")
	if errors.Is(err, queue.ErrRepeat) {
		return nil
	}
	return err
}

func (q *Queue) encode(e *envelope.Envelope) ([]byte, error) {
	data, err := envelope.Encode(e)
	if err != nil {
		return nil, err
	}
	if len(data) > q.MaxPayload() {
		return nil, fmt.Errorf("%w: %d bytes encoded, at most %d", queue.ErrTooLarge, len(data), q.MaxPayload())
	}
	return data, nil
}

// publish returns once the stream has stored m (on a quorum of replicas).
func (q *Queue) publish(ctx context.Context, m *nats.Msg, msgID string, opts ...jetstream.PublishOpt) error {
	if !q.Connected() {
		return queue.ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, q.o.PublishTimeout)
	defer cancel()
	disarm := q.breaker.Guard(q.o.PublishTimeout)
	ack, err := q.js.PublishMsg(ctx, m, append(opts, jetstream.WithMsgID(msgID))...)
	disarm()
	switch {
	case err == nil && ack.Duplicate:
		return fmt.Errorf("%w: %s stored within the de-duplication window", queue.ErrRepeat, msgID)
	case err == nil:
		return nil
	case wrongLastSequence(err):
		return fmt.Errorf("%w: %s is still waiting", queue.ErrRepeat, m.Subject)
	case errors.Is(err, nats.ErrMaxPayload):
		return fmt.Errorf("%w: %v", queue.ErrTooLarge, err)
	default:
		err = publishError(m.Subject, err)
		if errors.Is(err, queue.ErrStorageFull) {
			q.refusedAt.Store(time.Now().UnixNano())
		}
		return err
	}
}

// The server's error codes (nats-server's errors.json) that refuse a
// write for want of storage.
const (
	codeAccountResourcesExceeded = 10002 // the account's storage limit
	codeInsufficientResources    = 10023 // the server's max_store (max_file_store)
	codeStorageResourcesExceeded = 10047 // no storage left for a new stream or replica
)

// publishError classifies a failed write to subject: queue.ErrStorageFull
// when the server refused it for want of storage, queue.ErrTimeout when
// it did not answer in time (a stalled server; also a file store whose
// disk filled, which answers nothing and refuses every later write to
// that stream until the server restarts), queue.ErrUnavailable otherwise.
func publishError(subject string, err error) error {
	var apiErr *jetstream.APIError
	switch {
	case errors.As(err, &apiErr) && (apiErr.ErrorCode == codeAccountResourcesExceeded ||
		apiErr.ErrorCode == codeInsufficientResources || apiErr.ErrorCode == codeStorageResourcesExceeded):
		return fmt.Errorf("%w: publish to %s: %v", queue.ErrStorageFull, subject, err)
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout):
		return fmt.Errorf("%w: publish to %s: %v", queue.ErrTimeout, subject, err)
	default:
		return fmt.Errorf("%w: publish to %s: %v", queue.ErrUnavailable, subject, err)
	}
}

// Close closes the connection. It is safe to call more than once.
func (q *Queue) Close() error {
	q.cancel()
	<-q.done
	<-q.rearmDone
	q.indexOnce.Do(func() {}) // none starts after this
	if q.indexDone != nil {
		<-q.indexDone
	}
	q.nc.Close()
	return nil
}
