package jetstream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/status"
)

// casAttempts bounds how often a status write is tried again after
// another write to the same id came first.
const casAttempts = 3

// statusSubject is where the status of id for function is kept: two
// functions may use the same id. Both are escaped into one token each.
func (q *Queue) statusSubject(function, id string) string {
	return q.o.Prefix + ".status." + token(function) + "." + token(id)
}

// anyStatusSubject matches the statuses of id for every function.
func (q *Queue) anyStatusSubject(id string) string { return q.o.Prefix + ".status.*." + token(id) }

// allStatuses matches every status, those stored by earlier versions on
// <prefix>.status.<id> too.
func (q *Queue) allStatuses() string { return q.o.Prefix + ".status.>" }

// statusMaxMsgs bounds the status stream, as the embedded NATS Streaming
// server bounds its status channel: statuses share the server's storage
// with the messages, and losing the oldest status is better than a full
// disk refusing new messages.
const statusMaxMsgs = 1_000_000

// statusStreamConfig is the stream of statuses: the last one per
// function and id (MaxMsgsPerSubject 1), each with its own expiry (Nats-TTL), read with a
// direct get from any replica, the oldest dropped past statusMaxMsgs.
func (q *Queue) statusStreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              q.o.StatusStream,
		Subjects:          []string{q.allStatuses()},
		Storage:           jetstream.FileStorage,
		Retention:         jetstream.LimitsPolicy,
		Replicas:          q.o.Replicas,
		MaxMsgs:           statusMaxMsgs,
		MaxMsgsPerSubject: 1,
		Discard:           jetstream.DiscardOld,
		AllowMsgTTL:       true,
		AllowDirect:       true,
	}
}

// RecordStatus stores s on <prefix>.status.<function>.<id> unless the
// status kept there supersedes it: it reads the last one and writes with
// Nats-Expected-Last-Subject-Sequence, so two writers cannot overwrite a
// newer step with an older one. The message expires (Nats-TTL) at
// s.Expiry(StatusRetention), rounded up to a whole second.
func (q *Queue) RecordStatus(ctx context.Context, s status.Status) error {
	if !q.Connected() {
		return queue.ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, q.o.PublishTimeout)
	defer cancel()
	defer q.breaker.Guard(q.o.PublishTimeout)()
	now := time.Now()
	s.ExpiresAt = s.Expiry(q.o.StatusRetention).UTC()
	ttl := max(time.Until(s.ExpiresAt).Truncate(time.Second)+time.Second, time.Second)
	data, err := status.Encode(s)
	if err != nil {
		return err
	}
	subject := q.statusSubject(s.Function, s.ID)
	for range casAttempts {
		old, seq, err := q.lastStatus(ctx, subject, s.ID)
		switch {
		case errors.Is(err, queue.ErrNoStatus):
		case err != nil:
			return err
		case !s.Supersedes(old, now):
			return nil
		}
		m := nats.NewMsg(subject)
		m.Data = data
		_, err = q.js.PublishMsg(ctx, m, jetstream.WithMsgTTL(ttl), jetstream.WithExpectLastSequencePerSubject(seq))
		if err == nil || !wrongLastSequence(err) {
			if err != nil {
				return fmt.Errorf("%w: status of %s: %v", queue.ErrUnavailable, s.ID, err)
			}
			q.trim(ctx, s.Function)
			return nil
		}
	}
	return fmt.Errorf("%w: status of %s: written by others %d times meanwhile", queue.ErrUnavailable, s.ID, casAttempts)
}

// trackedFunctions bounds the function names written counts; past it the
// counts start again, so a flood of names cannot grow the map for ever.
const trackedFunctions = 10_000

// trim keeps the newest StatusesPerFunction statuses of function and
// removes the others, after every tenth of that many writes of its
// statuses by this process: so one function's flood of statuses pushes
// out its own first, as NATS Streaming's index does, and not another
// function's, as the stream's MaxMsgs alone would (it drops the oldest
// of any). The server does the work: a purge filtered to the function's
// subjects, keeping the newest. Between trims a function may hold up to
// a tenth more per writing process. A failed trim is logged and tried
// again at the next tenth; the status itself is stored.
func (q *Queue) trim(ctx context.Context, function string) {
	every := max(q.o.StatusesPerFunction/10, 1)
	q.writtenMu.Lock()
	n := q.written[function] + 1
	if n >= every {
		delete(q.written, function)
	} else {
		if len(q.written) >= trackedFunctions {
			clear(q.written)
		}
		q.written[function] = n
	}
	q.writtenMu.Unlock()
	if n < every {
		return
	}
	err := q.statusStream.Purge(ctx,
		jetstream.WithPurgeSubject(q.o.Prefix+".status."+token(function)+".*"),
		jetstream.WithPurgeKeep(uint64(q.o.StatusesPerFunction)))
	if err != nil {
		q.log.Warn("cannot trim a function's statuses to its newest", "function", function, "keep", q.o.StatusesPerFunction, "error", err)
	}
}

// Status returns the last status of id, of whichever function recorded
// one last, unless it has expired.
func (q *Queue) Status(ctx context.Context, id string) (status.Status, error) {
	if !q.Connected() {
		return status.Status{}, queue.ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, q.o.PublishTimeout)
	defer cancel()
	s, _, err := q.lastStatus(ctx, q.anyStatusSubject(id), id)
	if err == nil && s.Expired(time.Now()) {
		// The server removes it within a second or so.
		return status.Status{}, queue.ErrNoStatus
	}
	return s, err
}

// lastStatus reads the status of id last kept on subject and its stream
// sequence; seq is 0 with ErrNoStatus. A message that is not a status
// reads as none, so a good status can replace it.
func (q *Queue) lastStatus(ctx context.Context, subject, id string) (s status.Status, seq uint64, err error) {
	m, err := q.statusStream.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return status.Status{}, 0, queue.ErrNoStatus
	}
	if err != nil {
		return status.Status{}, 0, fmt.Errorf("%w: status of %s: %v", queue.ErrUnavailable, id, err)
	}
	s, err = status.Decode(m.Data)
	if err != nil {
		q.log.Warn("stored status is not one, ignored", "id", id, "seq", m.Sequence, "error", err)
		return status.Status{}, m.Sequence, queue.ErrNoStatus
	}
	return s, m.Sequence, nil
}

// wrongLastSequence reports a conditional write that lost to another
// (10164 on a replicated stream).
func wrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// Waiting counts, per function, the messages whose latest status is
// waiting or in flight (status.Counted). The first call starts following
// the status stream into an index; every call waits (until ctx ends) for
// the index to have read the stream up to now.
func (q *Queue) Waiting(ctx context.Context) (map[string]int, error) {
	if !q.Connected() {
		return nil, queue.ErrUnavailable
	}
	q.startIndex()
	if err := q.index.WaitSynced(ctx); err != nil {
		return nil, queue.ErrUnavailable
	}
	return q.index.Waiting(time.Now()), nil
}

// startIndex starts following the status stream into the index, once.
func (q *Queue) startIndex() {
	q.indexOnce.Do(func() {
		q.indexDone = make(chan struct{})
		go q.followStatuses(q.ctx)
	})
}

// Reserve reserves claims against Options.Quota in the index Waiting
// reads (queue.Quota.Reserve). The work stream has no limits of its own
// (see ensure).
func (q *Queue) Reserve(ctx context.Context, claims ...status.Claim) (func(), error) {
	if q.o.Quota.None() || len(claims) == 0 {
		return func() {}, nil
	}
	if !q.Connected() {
		return nil, queue.ErrUnavailable
	}
	q.startIndex()
	return q.o.Quota.Reserve(ctx, q.index, q.log, claims)
}

// syncCheckEvery is how often an index that is not synced asks the server
// whether it has read everything.
const syncCheckEvery = 200 * time.Millisecond

// followStatuses keeps the index following the status stream until ctx
// ends, starting again with back-off whenever the consumer stops.
func (q *Queue) followStatuses(ctx context.Context) {
	defer close(q.indexDone)
	backoff := 100 * time.Millisecond
	for {
		err := q.followOnce(ctx)
		q.index.SetSynced(false)
		if ctx.Err() != nil {
			return
		}
		q.log.Warn("cannot follow the status stream, retrying", "error", err, "retry_in", backoff)
		if !sleep(ctx, backoff) {
			return
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// followOnce reads the last status of every id with an ordered consumer
// (DeliverLastPerSubject), then every new one, into the index. nats.go
// re-creates an ordered consumer by itself after a reconnect or a missed
// heartbeat, from the stream sequence after the last one read, so a
// reconnect reads only what is new. The index is synced once the
// consumer's info reports nothing left to deliver and everything
// delivered read, checked at once and every syncCheckEvery while not
// synced (a disconnect marks it not synced). The message reporting no
// more pending would be quicker but may be stale, read from the client's
// buffer after a disconnect. followOnce returns when ctx ends or the
// consumer stops.
func (q *Queue) followOnce(ctx context.Context) error {
	cons, err := q.js.OrderedConsumer(ctx, q.o.StatusStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{q.allStatuses()},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		return err
	}
	var mu sync.Mutex
	var read struct {
		consumer string // the consumer of the last message read
		seq      uint64 // its consumer sequence
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		meta, err := m.Metadata()
		if err != nil {
			return
		}
		if s, err := status.Decode(m.Data()); err != nil {
			q.log.Warn("stored status is not one, ignored", "subject", m.Subject(), "seq", meta.Sequence.Stream, "error", err)
		} else {
			q.index.Put(s, time.Now())
		}
		mu.Lock()
		read.consumer, read.seq = meta.Consumer, meta.Sequence.Consumer
		mu.Unlock()
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		q.log.Debug("following the status stream", "error", err)
	}))
	if err != nil {
		return err
	}
	defer cc.Stop()
	caughtUp := func() bool {
		ctx, cancel := context.WithTimeout(ctx, q.o.PublishTimeout)
		defer cancel()
		info, err := cons.Info(ctx)
		if err != nil || info.NumPending > 0 {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		return info.Delivered.Consumer == 0 || (info.Name == read.consumer && info.Delivered.Consumer <= read.seq)
	}
	tick := time.NewTicker(syncCheckEvery)
	defer tick.Stop()
	for {
		if !q.index.Synced() && q.nc.IsConnected() && caughtUp() {
			q.index.SetSynced(true)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-cc.Closed():
			return errors.New("status consumer stopped")
		case <-tick.C:
		}
	}
}
