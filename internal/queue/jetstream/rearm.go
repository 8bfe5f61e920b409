package jetstream

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A schedule the server fires while the stream cannot store the message
// it fires (the server's max_file_store or the account's storage limit
// reached) is not fired again until the stream's leader changes or the
// server restarts: nats-server (2.15.2) marks a schedule in flight when
// it fires it, and clears the mark only then (scheduler.go, markInflight
// and clearInflight). Its message would wait until then. So a process
// that saw a write refused for want of storage (refusedAt) looks every
// rearmEvery, for rearmWindow after the last refusal and until nothing
// is left to look at, for schedules more than rearmAfter past their
// time, and stores each again on its subject: the server takes it for a
// new schedule, and the message it fires purges both. The expected last
// sequence makes sure that only the stuck one is replaced, by one
// process. Each look reads every waiting schedule, so it is done only
// then.

// rearmEvery is how often a process that saw the store full looks for
// stuck schedules.
const rearmEvery = 5 * time.Second

// rearmAfter is how far past its time a schedule must be to count as
// stuck: far more than the server's scheduler is late (about 250 ms).
const rearmAfter = 5 * time.Second

// rearmWindow is how long after the last write refused for want of
// storage a process keeps looking: the store may stay full, and
// schedules fire into it, while this process writes nothing.
const rearmWindow = time.Minute

// rearmLoop re-arms stuck schedules after a refusal, until ctx ends.
func (q *Queue) rearmLoop(ctx context.Context) {
	defer close(q.rearmDone)
	tick := time.NewTicker(rearmEvery)
	defer tick.Stop()
	pending := false // a look left something to look at again
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		refused := q.refusedAt.Load()
		if refused == 0 || !pending && time.Since(time.Unix(0, refused)) > rearmWindow {
			continue
		}
		n, more, err := q.rearm(ctx)
		pending = more || err != nil
		if err != nil {
			q.log.Warn("cannot fire again the schedules the server fired while its store was full, retrying", "error", err, "fired_again", n, "retry_in", rearmEvery)
			continue
		}
		if n > 0 {
			q.log.Warn("fired again schedules the server fired while its store was full", "fired_again", n)
		}
	}
}

// rearm stores again each schedule more than rearmAfter past its time,
// and returns how many it stored, and whether it saw one past its time
// by less, to look at again.
func (q *Queue) rearm(ctx context.Context) (n int, more bool, err error) {
	if !q.Connected() {
		return 0, false, errors.New("not connected")
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	st, err := q.js.Stream(ctx, q.o.Stream)
	if err != nil {
		return 0, false, err
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(q.scheduleSubject(">")))
	if err != nil {
		return 0, false, err
	}
	for subject := range info.State.Subjects {
		m, err := st.GetLastMsgForSubject(ctx, subject)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // fired and purged meanwhile
		}
		if err != nil {
			return n, more, err
		}
		at, ok := strings.CutPrefix(m.Header.Get(jetstream.ScheduleHeader), "@at ")
		fire, err := time.Parse(time.RFC3339Nano, at)
		if !ok || err != nil || time.Until(fire) > 0 {
			continue
		}
		if time.Since(fire) < rearmAfter {
			more = true
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
			return n, more, publishError(subject, err)
		default:
			n++
		}
	}
	return n, more, nil
}
