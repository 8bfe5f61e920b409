package jetstream_test

import (
	"context"
	"encoding/binary"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	js "github.com/nats-io/nats.go/jetstream"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/jsserver/jsservertest"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/queue/jetstream"
)

// BenchmarkDelayMechanism compares the two ways JetStream can delay a
// message: per-message schedules (what the backend uses) and NakWithDelay
// (the message is delivered at once and given back until it is due).
// Each run stores b.N messages due 1-10 s ahead, then 10 messages due in
// 1 s behind 2,000 due in an hour, and reports lateness and how many of the
// 10 arrived within 15 s.
//
//	go test -run '^$' -bench DelayMechanism -benchtime 5000x ./internal/queue/jetstream
func BenchmarkDelayMechanism(b *testing.B) {
	b.Run("schedule", func(b *testing.B) { benchDelay(b, scheduleMechanism) })
	b.Run("nak-with-delay", func(b *testing.B) { benchDelay(b, nakMechanism) })
}

// mechanism stores a message id due at due, and calls got when it is
// delivered; it returns a function that stores.
type mechanism func(b *testing.B, url string, got func(id string)) (store func(id string, due time.Time))

func benchDelay(b *testing.B, m mechanism) {
	srv := jsservertest.Start(b)
	var (
		mu   sync.Mutex
		due  = map[string]time.Time{}
		late []time.Duration
		seen = map[string]bool{}
	)
	store := m(b, srv.URL(), func(id string) {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		if !seen[id] {
			seen[id] = true
			late = append(late, now.Sub(due[id]))
		}
	})
	put := func(id string, at time.Time) {
		mu.Lock()
		due[id] = at
		mu.Unlock()
		store(id, at)
	}
	b.ResetTimer()
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
				put("m"+strconv.FormatInt(i, 10), time.Now().Add(time.Second+rand.N(9*time.Second)))
			}
		})
	}
	wg.Wait()
	stored := time.Since(start)
	poll.Until(b, 2*time.Minute, "all delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(late) >= b.N
	})
	b.StopTimer()

	for i := range 2000 {
		put("hour"+strconv.Itoa(i), time.Now().Add(time.Hour))
	}
	for i := range 10 {
		put("second"+strconv.Itoa(i), time.Now().Add(time.Second))
	}
	deadline := time.Now().Add(15 * time.Second)
	short := 0
	for time.Now().Before(deadline) && short < 10 {
		time.Sleep(50 * time.Millisecond)
		mu.Lock()
		short = 0
		for i := range 10 {
			if seen["second"+strconv.Itoa(i)] {
				short++
			}
		}
		mu.Unlock()
	}

	mu.Lock()
	defer mu.Unlock()
	lat := late[:b.N]
	slices.Sort(lat)
	ms := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))]) / float64(time.Millisecond) }
	b.ReportMetric(float64(b.N)/stored.Seconds(), "stored/s")
	b.ReportMetric(ms(0.5), "p50-late-ms")
	b.ReportMetric(ms(0.99), "p99-late-ms")
	b.ReportMetric(float64(short), "1s-behind-1h-delivered/10")
}

// scheduleMechanism is the backend itself.
func scheduleMechanism(b *testing.B, url string, got func(string)) func(string, time.Time) {
	q, err := jetstream.Open(jetstream.Options{Options: queue.Options{URL: url, MaxInflight: 64, Logger: slog.New(slog.DiscardHandler)}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = q.Close() })
	poll.Until(b, 10*time.Second, "connected", q.Connected)
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	go func() {
		_ = q.Consume(ctx, func(_ context.Context, e *envelope.Envelope) error {
			got(e.ID)
			return nil
		})
	}()
	return func(id string, due time.Time) {
		if err := q.Schedule(context.Background(), &envelope.Envelope{ID: id, Function: "fn", DueAt: due}); err != nil {
			b.Error(err)
		}
	}
}

// nakMechanism publishes at once; the consumer gives each message back
// with NakWithDelay until it is due. MaxAckPending is the server default.
func nakMechanism(b *testing.B, url string, got func(string)) func(string, time.Time) {
	nc, err := nats.Connect(url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	j, err := js.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := j.CreateStream(ctx, js.StreamConfig{Name: "nak", Subjects: []string{"nak.>"}, Storage: js.FileStorage, Retention: js.WorkQueuePolicy}); err != nil {
		b.Fatal(err)
	}
	c, err := j.CreateOrUpdateConsumer(ctx, "nak", js.ConsumerConfig{Durable: "c", AckPolicy: js.AckExplicitPolicy, AckWait: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	cc, err := c.Consume(func(m js.Msg) {
		due := time.Unix(0, int64(binary.BigEndian.Uint64(m.Data())))
		if wait := time.Until(due); wait > 0 {
			_ = m.NakWithDelay(wait)
			return
		}
		got(m.Headers().Get("id"))
		_ = m.Ack()
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cc.Stop)
	return func(id string, due time.Time) {
		msg := nats.NewMsg("nak.due")
		msg.Header.Set("id", id)
		msg.Data = binary.BigEndian.AppendUint64(nil, uint64(due.UnixNano()))
		if _, err := j.PublishMsg(ctx, msg); err != nil {
			b.Error(err)
		}
	}
}
