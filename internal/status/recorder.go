package status

import (
	"context"
	"hash/fnv"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/metric"
)

// Store keeps statuses: queue.Queue.
type Store interface {
	// RecordStatus stores s unless the stored status of s.ID supersedes
	// it, and returns nil once the broker has acknowledged the write.
	RecordStatus(ctx context.Context, s Status) error
}

// Keeper is implemented by a Store that may keep no statuses at all (the
// statuses setting is false): a Recorder on a Store whose KeepsStatuses
// is false records nothing and starts no goroutine.
type Keeper interface {
	KeepsStatuses() bool
}

// Recorder sizes: Shards statuses are written at once, each shard in the
// order recorded, and at most Buffer wait in all; more are dropped.
const (
	Shards = 8
	Buffer = 1024
)

// publishTimeout bounds one write of a status.
const publishTimeout = 5 * time.Second

// Recorder stores statuses in the background, so that recording one
// never waits for the broker: Record returns at once, and a status that
// finds the buffer full, or cannot be stored, is dropped and counted in
// mailbox_status_dropped_total. Statuses of one id go through one shard,
// in the order recorded. A shard's goroutine runs only while it has work,
// so a Recorder needs no stopping.
type Recorder struct {
	store   Store
	dropped prometheus.Counter
	log     *slog.Logger
	off     bool // the store keeps no statuses: Record does nothing
	shards  [Shards]shard
}

type shard struct {
	mu      sync.Mutex
	pending chan Status
	running bool
}

// NewRecorder returns a Recorder writing to store and counting drops on
// reg (shared with every Recorder on reg).
func NewRecorder(store Store, reg prometheus.Registerer, log *slog.Logger) (*Recorder, error) {
	dropped, err := DroppedCounter(reg)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Recorder{store: store, dropped: dropped, log: log}
	if k, ok := store.(Keeper); ok && !k.KeepsStatuses() {
		r.off = true
	}
	for i := range r.shards {
		r.shards[i].pending = make(chan Status, Buffer/Shards)
	}
	return r, nil
}

// Record queues statuses to be stored; it never blocks.
func (r *Recorder) Record(statuses ...Status) {
	if r.off {
		return
	}
	for _, s := range statuses {
		h := fnv.New32a()
		_, _ = h.Write([]byte(s.ID))
		sh := &r.shards[h.Sum32()%Shards]
		sh.mu.Lock()
		select {
		case sh.pending <- s:
			if !sh.running {
				sh.running = true
				go r.drain(sh)
			}
		default:
			r.dropped.Inc()
			r.log.Debug("status dropped: buffer full", "id", s.ID, "status", s.State)
		}
		sh.mu.Unlock()
	}
}

// drain stores what sh holds, then stops.
func (r *Recorder) drain(sh *shard) {
	for {
		sh.mu.Lock()
		var s Status
		select {
		case s = <-sh.pending:
		default:
			sh.running = false
			sh.mu.Unlock()
			return
		}
		sh.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
		err := r.store.RecordStatus(ctx, s)
		cancel()
		if err != nil {
			r.dropped.Inc()
			r.log.Debug("status dropped", "id", s.ID, "status", s.State, "error", err)
		}
	}
}

// Wait returns once every status recorded so far has been stored or
// dropped, or when ctx ends.
func (r *Recorder) Wait(ctx context.Context) {
	for !r.idle() {
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (r *Recorder) idle() bool {
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		running := sh.running
		sh.mu.Unlock()
		if running {
			return false
		}
	}
	return true
}

// DroppedCounter returns mailbox_status_dropped_total on reg, registering
// it on first use, so that the API and the connector of one process count
// into one series.
func DroppedCounter(reg prometheus.Registerer) (prometheus.Counter, error) {
	c := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "mailbox_status_dropped_total",
		Help: "Message statuses not stored: the buffer was full or the broker did not take them.",
	})
	return metric.Shared[prometheus.Counter](reg, c)
}
