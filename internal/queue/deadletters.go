package queue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// DeadLetterLog is how a backend keeps dead letters so that they can be
// listed, read, replayed and removed. Both brokers keep them as an
// append-only log: DeadLetter appends an envelope, RemoveDeadLetter
// appends a Removal naming the record it removes (JetStream also deletes
// the record itself; NATS Streaming cannot). A process that serves the
// dead letters follows the log into an index (internal/deadletter) and
// reads a record's bytes only when it needs its body.
type DeadLetterLog interface {
	// FollowDeadLetters calls fn with each record of the log after seq
	// after (0: from the first kept), in log order, on one goroutine,
	// then with each new record, until ctx ends (it returns ctx.Err()) or
	// the connection to the broker is lost (ErrUnavailable; the caller
	// follows again from the last seq it saw). A record already removed
	// from the broker is skipped. fn is not called once it has returned.
	//
	// When the log no longer holds the record at after as the caller saw
	// it, because the broker's store was reset and numbers its records
	// from 1 again (NATS Streaming on a memory store, restarted), it
	// returns ErrLogReset: the caller forgets what it read and follows
	// from 0.
	FollowDeadLetters(ctx context.Context, after uint64, fn func(Record)) error
	// LastDeadLetterSeq is the seq of the newest record now, 0 when the
	// log is empty; a follower that has seen it is up to date.
	LastDeadLetterSeq(ctx context.Context) (uint64, error)
	// ReadDeadLetter returns the dead letter stored at seq, or
	// ErrNoDeadLetter when the broker no longer keeps it (deleted,
	// expired, a removal, or never stored). It does not look for a
	// removal later in the log: NATS Streaming cannot delete, so it
	// still returns a removed record, and so may JetStream when a
	// process stopped between a removal and the delete that follows it.
	// Whether a dead letter is removed is for the index that follows
	// the log to say.
	ReadDeadLetter(ctx context.Context, seq uint64) (Record, error)
	// RemoveDeadLetter appends r to the log; it returns nil once the
	// broker has acknowledged it (JetStream then deletes the record at
	// r.Seq). Removing a record twice is harmless.
	RemoveDeadLetter(ctx context.Context, r Removal) error
}

// Record is one entry of the dead-letter log: a dead letter (Data is an
// encoded envelope), a removal (Removal is set, Data nil), or neither: a
// record that holds no dead letter (a marker, or bytes that could not be
// read), which a reader only counts as read.
type Record struct {
	// Seq is the record's position in the log, from 1, increasing.
	Seq uint64
	// Time is when the broker stored the record.
	Time    time.Time
	Data    []byte
	Removal *Removal
}

// Why a dead letter was removed.
const (
	// RemovedReplayed: replayed into the queue.
	RemovedReplayed = "replayed"
	// RemovedPurged: deleted by a user.
	RemovedPurged = "purged"
	// RemovedExpired: older than the dead-letter retention.
	RemovedExpired = "expired"
	// RemovedLimit: the oldest, dropped to keep the log under its limit.
	RemovedLimit = "limit"
)

// Removal removes the dead letter at Seq.
type Removal struct {
	Seq uint64 `json:"seq"`
	// ID is the removed dead letter's message id, for a reader that never
	// saw the record (JetStream deletes it).
	ID    string `json:"id,omitempty"`
	Cause string `json:"cause"`
	// By names the process that removed it. Several processes may remove
	// the same record; the first removal in the log is the one that
	// counts, so only its author counts it in the metrics.
	By string `json:"by"`
}

// ErrNoDeadLetter means no dead letter is kept at a seq.
var ErrNoDeadLetter = errors.New("queue: no such dead letter")

// ErrLogReset means the dead-letter log was reset under a follower: the
// record it read last is gone or another one has its seq.
var ErrLogReset = errors.New("queue: the dead-letter log was reset")

// removalMark starts every encoded Removal, so that a removal never reads
// as an envelope (whose first byte is its version, 0x01).
const removalMark = "removal:"

// Marker is a record that holds nothing: a backend that cannot tell an
// empty log from a slow one (NATS Streaming) appends one, so that the log
// always has a last record.
var Marker = []byte("marker:")

// EncodeRemoval returns r as stored in the log.
func EncodeRemoval(r Removal) ([]byte, error) {
	data, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	return append([]byte(removalMark), data...), nil
}

// DecodeRecord turns stored bytes into a Record: nothing for a Marker, a
// Removal when they carry the removal mark, otherwise a dead letter whose
// bytes are kept as they are (they are decoded, and found malformed, only
// when read).
func DecodeRecord(seq uint64, t time.Time, data []byte) (Record, error) {
	r := Record{Seq: seq, Time: t}
	if bytes.Equal(data, Marker) {
		return r, nil
	}
	if len(data) < len(removalMark) || string(data[:len(removalMark)]) != removalMark {
		r.Data = data
		return r, nil
	}
	var rm Removal
	if err := json.Unmarshal(data[len(removalMark):], &rm); err != nil || rm.Seq == 0 {
		return r, fmt.Errorf("queue: record %d: bad removal %q", seq, data)
	}
	r.Removal = &rm
	return r, nil
}
