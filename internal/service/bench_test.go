package service_test

import (
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/poll"
	"github.com/openfaas/mailbox/internal/service"
	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkLateness schedules b.N messages due at random times 1-10 s
// ahead through the API's queue, delivers them to a stand-in gateway, and
// reports how late each delivery started. Run it with a fixed count:
//
//	go test -run '^$' -bench Lateness -benchtime 20000x ./internal/service
func BenchmarkLateness(b *testing.B) {
	// burst: callers requeue as fast as the broker acknowledges, which
	// saturates a two-core machine; steady: 200 requeues a second.
	for _, backend := range backends {
		b.Run(backend+"/burst", func(b *testing.B) { benchLateness(b, backend, 0) })
		b.Run(backend+"/steady", func(b *testing.B) { benchLateness(b, backend, 200) })
	}
}

func benchLateness(b *testing.B, backend string, perSecond int) {
	bb := setup(b, backend, nil)
	var (
		mu   sync.Mutex
		late []time.Duration
	)
	bb.gw.Deploy("bench", http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		at := time.Now()
		body, _ := io.ReadAll(r.Body)
		due, err := time.Parse(time.RFC3339Nano, string(body))
		if err != nil {
			return
		}
		mu.Lock()
		late = append(late, at.Sub(due))
		mu.Unlock()
	}), nil)
	q, err := service.OpenQueue(bb.cfg, prometheus.NewRegistry(), quiet)
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	poll.Until(b, 10*time.Second, "queue connected", q.Connected)

	bb.startConnector(b)
	b.ResetTimer()
	// Callers requeue concurrently, as many functions would.
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := int(next.Add(1)); i <= b.N; i = int(next.Add(1)) {
				if perSecond > 0 {
					time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(perSecond))))
				}
				due := time.Now().Add(time.Second + rand.N(9*time.Second))
				e := &envelope.Envelope{ID: strconv.Itoa(i), Function: "bench", Body: []byte(due.Format(time.RFC3339Nano)), Policy: envelope.Policy{MaxRetries: new(1), Delay: new(time.Second)}, AcceptedAt: time.Now(), DueAt: due}
				if err := q.Schedule(context.Background(), e); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	published := time.Since(start)
	poll.Until(b, 5*time.Minute, "every message delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(late) >= b.N
	})
	b.StopTimer()
	slices.Sort(late)
	pct := func(p float64) float64 { return float64(late[int(p*float64(len(late)-1))]) / float64(time.Millisecond) }
	b.ReportMetric(float64(b.N)/published.Seconds(), "published/s")
	b.ReportMetric(pct(0.5), "p50-late-ms")
	b.ReportMetric(pct(0.99), "p99-late-ms")
	b.ReportMetric(pct(1), "max-late-ms")
	b.ReportMetric(float64(late[0])/float64(time.Millisecond), "min-late-ms")
}
