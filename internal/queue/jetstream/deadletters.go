package jetstream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/openfaas/mailbox/internal/queue"
)

// The dead-letter log is the dead-letter stream, one subject
// (<prefix>.deadletter) holding dead letters and removals in the order
// they were stored. A removal is published first and the record it
// removes deleted after, so a process that stops in between leaves the
// record present but already removed in the log. Removals expire on their
// own (Nats-TTL) when the stream's age limit would have dropped the
// records they remove: the dead-letter retention and the backstop.

// deadLetterBackstop is how much longer than the dead-letter retention
// the stream keeps a record: the mailbox removes expired dead letters
// itself, with a removal that is counted, and the stream's age limit only
// catches what it missed.
const deadLetterBackstop = 24 * time.Hour

// followWindow bounds the records a follower has pulled but not yet
// handed to fn: a dead letter may be as large as MaxPayload.
const followWindow = 128

// deadLetterStreamConfig is the stream of the dead-letter log.
func (q *Queue) deadLetterStreamConfig() jetstream.StreamConfig {
	var maxAge time.Duration // 0: no age limit
	if q.o.DeadLetterMaxAge > 0 {
		maxAge = q.o.DeadLetterMaxAge + deadLetterBackstop
	}
	return jetstream.StreamConfig{
		Name:        q.o.DeadLetterStream,
		Subjects:    []string{q.deadLetterSubject()},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Replicas:    q.o.Replicas,
		MaxAge:      maxAge,
		Duplicates:  q.o.DuplicateWindow,
		AllowMsgTTL: true, // removals expire on their own
	}
}

// FollowDeadLetters reads the log with an ordered consumer, which the
// client re-creates where it left off if the server loses it. Losing the
// connection ends the follow with ErrUnavailable.
func (q *Queue) FollowDeadLetters(ctx context.Context, after uint64, fn func(queue.Record)) error {
	// Listening before checking: a loss after the check is still heard.
	lost := q.nc.StatusChanged(nats.DISCONNECTED, nats.RECONNECTING, nats.CLOSED)
	defer q.nc.RemoveStatusListener(lost)
	if !q.Connected() {
		return queue.ErrUnavailable
	}
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{q.deadLetterSubject()},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}
	if after > 0 {
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = after + 1
	}
	cons, err := q.js.OrderedConsumer(ctx, q.o.DeadLetterStream, cfg)
	if err != nil {
		return q.followError(ctx, err)
	}
	// mu makes fn's calls end before FollowDeadLetters returns: the
	// client may still be in the callback when it is told to stop.
	var (
		mu      sync.Mutex
		stopped bool
	)
	// The client re-creates the consumer after missed heartbeats or its
	// deletion by itself; a closed connection or a missing stream ends
	// the follow.
	failed := make(chan error, 1)
	onErr := func(_ jetstream.ConsumeContext, err error) {
		if errors.Is(err, jetstream.ErrConnectionClosed) || errors.Is(err, jetstream.ErrStreamNotFound) {
			select {
			case failed <- err:
			default:
			}
		}
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		md, err := m.Metadata()
		if err != nil {
			q.log.Warn("dead-letter record without metadata, skipped", "error", err)
			return
		}
		r, err := queue.DecodeRecord(md.Sequence.Stream, md.Timestamp, m.Data())
		if err != nil {
			// Passed on bare, so that the follower still counts it read.
			q.log.Warn("dead-letter record skipped", "seq", md.Sequence.Stream, "error", err)
			r = queue.Record{Seq: md.Sequence.Stream, Time: md.Timestamp}
		}
		fn(r)
	}, jetstream.PullMaxMessages(followWindow), jetstream.ConsumeErrHandler(onErr))
	if err != nil {
		return q.followError(ctx, err)
	}
	defer func() {
		cc.Stop()
		mu.Lock()
		stopped = true
		mu.Unlock()
	}()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-lost:
		return fmt.Errorf("%w: following dead letters: connection lost", queue.ErrUnavailable)
	case err := <-failed:
		return fmt.Errorf("%w: following dead letters: %v", queue.ErrUnavailable, err)
	}
}

func (q *Queue) followError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("%w: following dead letters: %v", queue.ErrUnavailable, err)
}

// LastDeadLetterSeq asks for the last message on the dead-letter subject,
// which skips deleted and expired ones.
func (q *Queue) LastDeadLetterSeq(ctx context.Context) (uint64, error) {
	if !q.Connected() {
		return 0, queue.ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, q.o.PublishTimeout)
	defer cancel()
	m, err := q.deadLetterStream.GetLastMsgForSubject(ctx, q.deadLetterSubject())
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("%w: last dead letter: %v", queue.ErrUnavailable, err)
	}
	return m.Sequence, nil
}

// ReadDeadLetter gets the message at seq from the stream.
func (q *Queue) ReadDeadLetter(ctx context.Context, seq uint64) (queue.Record, error) {
	if !q.Connected() {
		return queue.Record{}, queue.ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, q.o.PublishTimeout)
	defer cancel()
	m, err := q.deadLetterStream.GetMsg(ctx, seq)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return queue.Record{}, queue.ErrNoDeadLetter
	case err != nil:
		return queue.Record{}, fmt.Errorf("%w: dead letter %d: %v", queue.ErrUnavailable, seq, err)
	}
	r, err := queue.DecodeRecord(m.Sequence, m.Time, m.Data)
	if err != nil || r.Data == nil {
		return queue.Record{}, queue.ErrNoDeadLetter
	}
	return r, nil
}

// RemoveDeadLetter publishes the removal, expiring after the dead-letter
// retention, then deletes the record it removes. Its Nats-Msg-Id makes a
// removal of the same record by another process within the duplicate
// window a no-op. When the delete fails, the removal is in the log
// already and the error says so; the record stays until the stream's age
// limit, or a removal tried again deletes it.
func (q *Queue) RemoveDeadLetter(ctx context.Context, r queue.Removal) error {
	if r.Seq == 0 {
		return errors.New("jetstream: removal of dead letter 0")
	}
	data, err := queue.EncodeRemoval(r)
	if err != nil {
		return err
	}
	m := nats.NewMsg(q.deadLetterSubject())
	m.Data = data
	var opts []jetstream.PublishOpt
	if q.o.DeadLetterMaxAge > 0 {
		// Whole seconds, rounded up: the server's TTL resolution.
		ttl := (q.o.DeadLetterMaxAge + deadLetterBackstop + time.Second - 1).Truncate(time.Second)
		opts = append(opts, jetstream.WithMsgTTL(ttl))
	}
	seq := strconv.FormatUint(r.Seq, 10)
	// A repeat: the same removal by another process, within the window.
	if err := q.publish(ctx, m, "removed."+seq, opts...); err != nil && !errors.Is(err, queue.ErrRepeat) {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, q.o.PublishTimeout)
	defer cancel()
	err = q.deadLetterStream.DeleteMsg(ctx, r.Seq)
	if err == nil {
		return nil
	}
	// The server answers a delete of a missing message with one of two
	// codes that the client folds into its error text; asking is plainer.
	if _, gerr := q.deadLetterStream.GetMsg(ctx, r.Seq); errors.Is(gerr, jetstream.ErrMsgNotFound) {
		return nil // already gone
	}
	return fmt.Errorf("%w: dead letter %d removed, but not deleted: %v", queue.ErrUnavailable, r.Seq, err)
}
