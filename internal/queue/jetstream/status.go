package jetstream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/status"
)

// casAttempts bounds how often a status write is tried again after
// another write to the same id came first.
const casAttempts = 3

func (q *Queue) statusSubject(id string) string { return q.o.Prefix + ".status." + id }

// statusMaxMsgs bounds the status stream, as the embedded NATS Streaming
// server bounds its status channel: statuses share the server's storage
// with the messages, and losing the oldest status is better than a full
// disk refusing new messages.
const statusMaxMsgs = 1_000_000

// statusStreamConfig is the stream of statuses: the last one per id
// (MaxMsgsPerSubject 1), each with its own expiry (Nats-TTL), read with a
// direct get from any replica, the oldest dropped past statusMaxMsgs.
func (q *Queue) statusStreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              q.o.StatusStream,
		Subjects:          []string{q.statusSubject("*")},
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

// RecordStatus stores s on <prefix>.status.<id> unless the status kept
// there supersedes it: it reads the last one and writes with
// Nats-Expected-Last-Subject-Sequence, so two writers cannot overwrite a
// newer step with an older one. The message expires (Nats-TTL) at
// s.Expiry(StatusRetention), rounded up to a whole second.
func (q *Queue) RecordStatus(ctx context.Context, s status.Status) error {
	if !q.Connected() {
		return queue.ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, q.o.PublishTimeout)
	defer cancel()
	now := time.Now()
	s.ExpiresAt = s.Expiry(q.o.StatusRetention).UTC()
	ttl := max(time.Until(s.ExpiresAt).Truncate(time.Second)+time.Second, time.Second)
	data, err := status.Encode(s)
	if err != nil {
		return err
	}
	for range casAttempts {
		old, seq, err := q.lastStatus(ctx, s.ID)
		switch {
		case errors.Is(err, queue.ErrNoStatus):
		case err != nil:
			return err
		case !s.Supersedes(old, now):
			return nil
		}
		m := nats.NewMsg(q.statusSubject(s.ID))
		m.Data = data
		_, err = q.js.PublishMsg(ctx, m, jetstream.WithMsgTTL(ttl), jetstream.WithExpectLastSequencePerSubject(seq))
		if err == nil || !wrongLastSequence(err) {
			if err != nil {
				return fmt.Errorf("%w: status of %s: %v", queue.ErrUnavailable, s.ID, err)
			}
			return nil
		}
	}
	return fmt.Errorf("%w: status of %s: written by others %d times meanwhile", queue.ErrUnavailable, s.ID, casAttempts)
}

// Status returns the last status of id unless it has expired.
func (q *Queue) Status(ctx context.Context, id string) (status.Status, error) {
	if !q.Connected() {
		return status.Status{}, queue.ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, q.o.PublishTimeout)
	defer cancel()
	s, _, err := q.lastStatus(ctx, id)
	if err == nil && s.Expired(time.Now()) {
		// The server removes it within a second or so.
		return status.Status{}, queue.ErrNoStatus
	}
	return s, err
}

// lastStatus reads the status kept for id and its stream sequence; seq
// is 0 with ErrNoStatus. A message that is not a status reads as none,
// so a good status can replace it.
func (q *Queue) lastStatus(ctx context.Context, id string) (s status.Status, seq uint64, err error) {
	m, err := q.statusStream.GetLastMsgForSubject(ctx, q.statusSubject(id))
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
