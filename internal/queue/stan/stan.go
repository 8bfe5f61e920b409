// Package stan implements queue.Queue on NATS Streaming.
//
// NATS Streaming has no per-message delay, and holding waiting messages
// unacknowledged in the connector would keep them all in memory and let a
// message due in one hour block one due in one second. Instead a message
// waits in delay tiers: channels <prefix>.delay.<2^k> (seconds, k = 0..20).
// A message with remaining delay d is published to the largest tier <= d
// (or to <prefix>.ready once d < 1 s). Every message in a tier waits exactly
// the tier's time after it was published, so each tier is FIFO in wake-up
// order and a small window of unacknowledged messages per tier suffices.
// When a message wakes, its remainder goes to the next tier down, and the
// original is acknowledged only after that forward was acknowledged. A
// message's remaining delay shrinks by at least half on every hop, so it
// takes at most 21 hops.
//
// A sub-second remainder is held by the tier worker until just before it
// is due, then moved to the ready channel, whose consumer calls the
// handler on time.
package stan

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	stango "github.com/nats-io/stan.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/status"
)

// MaxTier is the largest delay tier exponent: 2^20 s, about 12 days.
const MaxTier = 20

// protocolOverhead is room left in a NATS message for NATS Streaming's
// own framing around the envelope (client id, guid, subject).
const protocolOverhead = 512

// Options configure the backend.
type Options struct {
	queue.Options
	// ClusterID of NATS Streaming. Defaults to faas-cluster.
	ClusterID string
	// ClientID names this process to NATS Streaming; two live processes
	// must not share one. A process that connects with the id of one that
	// died without closing (SIGKILL) replaces its registration: the
	// server hands what the dead one held to the queue group at once,
	// instead of after its heartbeats drop it (about 5 minutes at the
	// server's defaults). Defaults to DefaultClientID: <Prefix>-<Role>-<host
	// name>, the same for a container restarted in its Kubernetes pod.
	// When a live process already has the default id (two processes on
	// one host), a random suffix is added; a configured id is retried
	// until it is free.
	ClientID string
	// Role is what the process does with the queue (api, connector), part
	// of the default ClientID: an API and a connector on one host (faasd,
	// a bed, mailbox serve) each keep an id of their own, so a restarted
	// connector replaces its own dead registration, not falls back to a
	// random id beside it. Defaults to queue.
	Role string
	// TierWindow is how many messages each tier worker holds at once. A
	// tier of T seconds keeps its messages on time while no more than
	// TierWindow/T of them a second pass through it (the 1 s tier holds a
	// message up to 2 s: its second plus the sub-second remainder).
	// Defaults to 2048: 1,000 messages a second falling due through the
	// 1 s tier, about 20 MiB held at most per busy tier.
	TierWindow int
	// StatusIndexLimit bounds the statuses a process that answers Status
	// or Waiting keeps in memory; past it a final status is forgotten
	// first, the one updated longest ago, then a waiting or in-flight one.
	// Defaults to 50,000 more than Quota.MaxWaiting, at least 50,000:
	// about 540 bytes each, 26 MiB per 50,000 (status.TestIndexMemory).
	// Reserve counts from it.
	StatusIndexLimit int
}

// Queue is a NATS Streaming backend. It connects in the background and
// reconnects by itself for as long as it is open.
type Queue struct {
	o       Options
	log     *slog.Logger
	breaker *queue.Breaker // the connection, to break when a write is stuck

	mu      sync.Mutex
	cur     *generation   // nil while disconnected
	changed chan struct{} // closed and replaced when cur changes

	deadLetters *prometheus.CounterVec // nil without a Registerer
	index       *status.Index
	indexOnce   sync.Once
	maxPayload  atomic.Int64
	closed      chan struct{}
	closeOnce   sync.Once
	done        chan struct{}

	// clientID is the id the next connection uses, changed by run only:
	// Options.ClientID, or that with a random suffix when derivedID and
	// a live process has it.
	clientID  string
	derivedID bool

	// The last records read by FollowDeadLetters and the status index,
	// to tell a reset store (TestStoreResetRebuildsIndexes).
	deadLetterMark lastMark
	statusMark     lastMark
}

// DefaultClientID is the client id of a process on this host: <prefix>-<host
// name> (Open passes <prefix>-<role>), with characters NATS Streaming does not allow in an id as _, or
// <prefix>-<random> when the host name is unknown.
func DefaultClientID(prefix string) string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		return prefix + "-" + nuid.Next()
	}
	return prefix + "-" + strings.Map(func(r rune) rune {
		if r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, host)
}

// errClientIDTaken is the server's answer to a connect with the id of a
// live client.
const errClientIDTaken = "clientID already registered"

// generation is one NATS Streaming connection; lost is closed when the
// server no longer answers, after which a new generation is made.
type generation struct {
	sc stango.Conn
	// nc is sc's NATS connection, kept because sc.NatsConn() returns nil
	// once sc is closed, which the loop may do while others still hold g.
	nc       *nats.Conn
	lost     chan struct{}
	lostOnce sync.Once

	mu          sync.Mutex
	reconnected chan struct{} // closed and replaced when NATS reconnects
}

func (g *generation) markLost() { g.lostOnce.Do(func() { close(g.lost) }) }

// reconnects is closed the next time the NATS connection under g is
// made again (the streaming session goes on).
func (g *generation) reconnects() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.reconnected
}

func (g *generation) markReconnected() {
	g.mu.Lock()
	defer g.mu.Unlock()
	close(g.reconnected)
	g.reconnected = make(chan struct{})
}

// up reports whether g's NATS connection is connected now; false once it
// is closed.
func (g *generation) up() bool { return g.nc.IsConnected() }

// Open validates o and starts connecting in the background; it does not
// wait for the server, so a process can start while NATS is down.
func Open(o Options) (*Queue, error) {
	common, err := o.Options.WithDefaults()
	if err != nil {
		return nil, err
	}
	o.Options = common
	if o.ClusterID == "" {
		o.ClusterID = "faas-cluster"
	}
	derivedID := o.ClientID == ""
	if o.Role == "" {
		o.Role = "queue"
	}
	if derivedID {
		o.ClientID = DefaultClientID(o.Prefix + "-" + o.Role)
	}
	if o.TierWindow <= 0 {
		o.TierWindow = 2048
	}
	if o.StatusIndexLimit <= 0 {
		// Room for every message the quota lets wait, which the index
		// forgets last, and for final statuses.
		o.StatusIndexLimit = max(50_000, o.Quota.MaxWaiting+50_000)
	}
	deadLetters, err := o.DeadLetterCounter()
	if err != nil {
		return nil, err
	}
	q := &Queue{
		o:           o,
		breaker:     &queue.Breaker{},
		log:         o.Logger.With("component", "stan"),
		clientID:    o.ClientID,
		derivedID:   derivedID,
		changed:     make(chan struct{}),
		closed:      make(chan struct{}),
		done:        make(chan struct{}),
		deadLetters: deadLetters,
		index:       status.NewIndex(o.StatusIndexLimit, false),
	}
	q.maxPayload.Store(1 << 20) // NATS default until the server says otherwise
	go q.run()
	return q, nil
}

// Channel names.
func (q *Queue) readyChannel() string      { return q.o.Prefix + ".ready" }
func (q *Queue) deadLetterChannel() string { return DeadLetterChannel(q.o.Prefix) }

// DeadLetterChannel is the channel dead letters are kept in.
func DeadLetterChannel(prefix string) string { return prefix + ".deadletter" }
func (q *Queue) tierChannel(k int) string {
	return q.o.Prefix + ".delay." + strconv.Itoa(1<<k)
}

// channelFor is the channel a message with remaining delay d waits in; a
// message already overdue (d < 0) is ready.
func (q *Queue) channelFor(d time.Duration) string {
	if d < time.Second {
		return q.readyChannel()
	}
	return q.tierChannel(min(bits.Len64(uint64(d/time.Second))-1, MaxTier))
}

// run keeps one connection open until Close.
func (q *Queue) run() {
	defer close(q.done)
	backoff := 100 * time.Millisecond
	for {
		g, err := q.connect()
		if err != nil && q.derivedID && strings.Contains(err.Error(), errClientIDTaken) {
			// Another process on this host: this one cannot replace it.
			taken := q.clientID
			q.clientID = taken + "-" + nuid.Next()
			q.derivedID = false
			q.log.Warn("another live process has this host's NATS Streaming client id, using a random one: if this process dies, what it holds waits for the server's heartbeats", "taken", taken, "client_id", q.clientID)
			continue
		}
		if err != nil {
			q.log.Warn("cannot connect to NATS Streaming, retrying", "url", queue.RedactURL(q.o.URL), "client_id", q.clientID, "error", err, "retry_in", backoff)
			select {
			case <-q.closed:
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		q.maxPayload.Store(g.nc.MaxPayload())
		q.set(g)
		q.log.Info("connected to NATS Streaming", "url", queue.RedactURL(q.o.URL), "cluster_id", q.o.ClusterID, "client_id", q.clientID)
		select {
		case <-g.lost:
			q.set(nil)
			q.log.Warn("lost connection to NATS Streaming, reconnecting")
			_ = g.sc.Close()
		case <-q.closed:
			q.set(nil)
			if err := g.sc.Close(); err != nil {
				q.log.Warn("closing NATS Streaming connection", "error", err)
			}
			return
		}
	}
}

func (q *Queue) connect() (*generation, error) {
	g := &generation{lost: make(chan struct{}), reconnected: make(chan struct{})}
	natsOpts := []nats.Option{
		nats.Name(q.clientID),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectHandler(func(*nats.Conn) {
			q.log.Info("reconnected to NATS")
			g.markReconnected()
		}),
		// Fail publishes at once while disconnected instead of buffering
		// them: the API answers 503 and stores nothing.
		nats.ReconnectBufSize(-1),
		// A write to a server that stopped reading (its socket buffers
		// full) blocks every publish on the connection: the flusher gives
		// it up after PublishTimeout instead of nats.go's minute, and a
		// publish stuck behind it breaks the connection (queue.Breaker).
		nats.FlusherTimeout(q.o.PublishTimeout),
		nats.SetCustomDialer(q.breaker),
	}
	if q.o.CredentialsFile != "" {
		natsOpts = append(natsOpts, nats.UserCredentials(q.o.CredentialsFile))
	}
	sc, err := stango.Connect(q.o.ClusterID, q.clientID,
		stango.NatsURL(q.o.URL),
		stango.NatsOptions(natsOpts...),
		stango.ConnectWait(5*time.Second),
		stango.PubAckWait(q.o.PublishTimeout),
		// A restarted server that forgot this client answers the next
		// ping with an error, so that is found within a second; silence
		// is tolerated for ten, as a busy machine can delay the answer and
		// a lost connection redelivers what this client held.
		stango.Pings(1, 10),
		stango.SetConnectionLostHandler(func(_ stango.Conn, err error) {
			q.log.Warn("NATS Streaming connection lost", "error", err)
			g.markLost()
		}),
	)
	if err != nil {
		return nil, err
	}
	g.sc, g.nc = sc, sc.NatsConn()
	return g, nil
}

func (q *Queue) set(g *generation) {
	q.mu.Lock()
	q.cur = g
	close(q.changed)
	q.changed = make(chan struct{})
	q.mu.Unlock()
}

func (q *Queue) current() *generation {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.cur
}

// wait returns the current connection, waiting for one if needed.
func (q *Queue) wait(ctx context.Context) (*generation, error) {
	for {
		q.mu.Lock()
		g, changed := q.cur, q.changed
		q.mu.Unlock()
		if g != nil {
			return g, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-q.closed:
			return nil, queue.ErrUnavailable
		case <-changed:
		}
	}
}

// Connected reports whether the server is reachable now.
func (q *Queue) Connected() bool {
	g := q.current()
	return g != nil && g.up()
}

// MaxPayload is the largest encoded envelope the server accepts.
func (q *Queue) MaxPayload() int { return int(q.maxPayload.Load()) - protocolOverhead }

// Schedule stores e in the channel matching its remaining delay.
func (q *Queue) Schedule(ctx context.Context, e *envelope.Envelope) error {
	return q.store(ctx, e, func() string { return q.channelFor(time.Until(e.DueAt)) })
}

// DeadLetter stores e in the dead-letter channel.
func (q *Queue) DeadLetter(ctx context.Context, e *envelope.Envelope) error {
	return q.store(ctx, e, q.deadLetterChannel)
}

func (q *Queue) store(ctx context.Context, e *envelope.Envelope, channel func() string) error {
	data, err := envelope.Encode(e)
	if err != nil {
		return err
	}
	if len(data) > q.MaxPayload() {
		return fmt.Errorf("%w: %d bytes encoded, at most %d", queue.ErrTooLarge, len(data), q.MaxPayload())
	}
	g := q.current()
	if g == nil {
		return queue.ErrUnavailable
	}
	// The channel is chosen last so that time spent encoding counts.
	return q.publish(ctx, g, channel(), data)
}

// publish returns once the server has acknowledged data on channel.
func (q *Queue) publish(ctx context.Context, g *generation, channel string, data []byte) error {
	// The ack is awaited for PublishTimeout (PubAckWait); PublishAsync
	// itself may block on a stuck connection.
	defer q.breaker.Guard(q.o.PublishTimeout)()
	acked := make(chan error, 1)
	_, err := g.sc.PublishAsync(channel, data, func(_ string, err error) { acked <- err })
	if err == nil {
		select {
		case err = <-acked:
		case <-ctx.Done():
			err = ctx.Err()
		case <-g.lost:
			err = errors.New("connection lost")
		}
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, nats.ErrMaxPayload):
		return fmt.Errorf("%w: %v", queue.ErrTooLarge, err)
	case strings.Contains(err.Error(), "no space left on device"):
		// The server's store could not write: it answers the publisher
		// so when it fails to store, though a failed flush of its file
		// store makes it panic (nats-streaming-server's ioLoop).
		return fmt.Errorf("%w: publish to %s: %v", queue.ErrStorageFull, channel, err)
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, stango.ErrTimeout):
		return fmt.Errorf("%w: publish to %s: %v", queue.ErrTimeout, channel, err)
	default:
		return fmt.Errorf("%w: publish to %s: %v", queue.ErrUnavailable, channel, err)
	}
}

// Close stops the connection loop. Consumers return once they have drained.
func (q *Queue) Close() error {
	q.closeOnce.Do(func() { close(q.closed) })
	<-q.done
	return nil
}
