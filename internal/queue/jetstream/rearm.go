package jetstream

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/openfaas/mailbox/internal/queue"
)

// A schedule the server fires while the stream cannot store the message
// it fires (the server's max_file_store or the account's storage limit
// reached) is not fired again until the stream's leader changes or the
// server restarts: nats-server (2.15.2) marks a schedule in flight when
// it fires it, and clears the mark only then, or when a new schedule is
// stored on its subject (scheduler.go: markInflight, clearInflight, add).
// Its message would wait until then. So a process that saw a write
// refused for want of storage (refusedAt) looks, from rearmEvery after
// the last refusal (the store has room again, or this process stopped
// writing) until rearmWindow after it, every rearmEvery, for schedules
// more than rearmAfter past their time, and stores each again on its
// subject: the server takes it for a new schedule, and the message it
// fires purges both. The expected last sequence makes sure that only the
// stuck one is replaced; the stream's lock serialises it with the fire.
//
// Only on a stream of one replica: on a cluster the leader steps down
// when a write is refused for storage, and the new leader fires every
// overdue schedule again by itself (stream.go: setLeader, ResetState);
// a schedule stored again while the old leader's fire is still being
// replicated would fire twice. And only while at most rearmLimit
// messages wait: each look reads every waiting schedule's subject.

// rearmEvery is how often a process that saw the store full looks for
// stuck schedules, and how long after the last refusal it starts.
const rearmEvery = 5 * time.Second

// rearmAfter is how far past its time a schedule must be to count as
// stuck: far more than the server's scheduler is late (about 250 ms).
const rearmAfter = 5 * time.Second

// rearmWindow is how long after the last write refused for want of
// storage a process keeps looking: schedules fired into the full store
// are found once they are rearmAfter past their time.
const rearmWindow = time.Minute

// rearmLimit bounds the messages waiting for a look to be made: 100,000
// subjects are about 10 MB read in one look.
const rearmLimit = 100_000

// rearmLoop re-arms stuck schedules after a refusal, until ctx ends.
func (q *Queue) rearmLoop(ctx context.Context) {
	defer close(q.rearmDone)
	tick := time.NewTicker(rearmEvery)
	defer tick.Stop()
	var warned int64 // the refusal a warning about rearmLimit was for
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		refused := q.refusedAt.Load()
		if since := time.Since(time.Unix(0, refused)); refused == 0 || since < rearmEvery || since > rearmWindow || !q.Connected() {
			continue
		}
		n, err := q.rearm(ctx)
		switch {
		case errors.Is(err, errTooMany):
			if warned != refused {
				warned = refused
				q.log.Warn("schedules the server fired while its store was full wait until the NATS server restarts", "error", err)
			}
		case err != nil:
			q.log.Warn("cannot fire again the schedules the server fired while its store was full, retrying", "error", err, "fired_again", n, "retry_in", rearmEvery)
		case n > 0:
			q.log.Warn("fired again schedules the server fired while its store was full", "fired_again", n)
		}
	}
}

// errTooMany is rearm's refusal to look at more than rearmLimit.
var errTooMany = fmt.Errorf("more than %d messages waiting, too many to look through", rearmLimit)

// rearm stores again each schedule more than rearmAfter past its time,
// and returns how many it stored.
func (q *Queue) rearm(ctx context.Context) (n int, err error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	st, err := q.js.Stream(ctx, q.o.Stream)
	if err != nil {
		return 0, err
	}
	if st.CachedInfo().State.Msgs > rearmLimit {
		return 0, errTooMany
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(q.scheduleSubject(">")))
	if err != nil {
		return 0, err
	}
	for subject := range info.State.Subjects {
		m, err := st.GetLastMsgForSubject(ctx, subject)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // fired and purged meanwhile
		}
		if err != nil {
			return n, err
		}
		at, ok := strings.CutPrefix(m.Header.Get(jetstream.ScheduleHeader), "@at ")
		fire, err := time.Parse(time.RFC3339Nano, at)
		if !ok || err != nil || time.Since(fire) < rearmAfter {
			continue
		}
		again := nats.NewMsg(subject)
		again.Data = m.Data
		again.Header.Set(jetstream.ScheduleHeader, "@at "+time.Now().Add(scheduleLead).UTC().Format(time.RFC3339Nano))
		again.Header.Set(jetstream.ScheduleTargetHeader, m.Header.Get(jetstream.ScheduleTargetHeader))
		pctx, pcancel := context.WithTimeout(ctx, q.o.PublishTimeout)
		_, err = q.js.PublishMsg(pctx, again, jetstream.WithExpectLastSequencePerSubject(m.Sequence))
		pcancel()
		switch {
		case wrongLastSequence(err):
			// Fired, or fired again by another process, meanwhile.
		case err != nil:
			err = publishError(subject, err)
			if errors.Is(err, queue.ErrStorageFull) {
				q.refusedAt.Store(time.Now().UnixNano()) // still full: look again later
			}
			return n, err
		default:
			n++
		}
	}
	return n, nil
}
