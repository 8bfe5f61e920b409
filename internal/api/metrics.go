package api

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/names"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/status"
)

// metrics are deliberately few. The function name comes from callers, so
// its label goes through names.Bounded.
type metrics struct {
	requests    *prometheus.CounterVec
	received    *prometheus.CounterVec
	bodyBytes   prometheus.Histogram
	deadLetters *prometheus.CounterVec // shared with the connector
	function    *names.Bounded
}

func newMetrics(reg prometheus.Registerer, q queue.Queue, log *slog.Logger) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailbox_requeue_requests_total",
			Help: "Requests to /deadletter/<function>, by HTTP status code answered.",
		}, []string{"code"}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailbox_received_total",
			Help: "Messages stored by /deadletter/<function> (scheduled or dead-lettered), by function.",
		}, []string{"function"}),
		function: names.NewBounded(names.MaxLabels),
		bodyBytes: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "mailbox_requeue_body_bytes",
			Help: "Size of the request bodies stored by /deadletter/<function>.",
			// 64 B to 1 MiB (NATS's default max payload), by 4x.
			Buckets: prometheus.ExponentialBuckets(64, 4, 8),
		}),
	}
	waiting := &waitingCollector{
		queue:    q,
		function: m.function,
		log:      log,
		desc: prometheus.NewDesc("mailbox_waiting",
			"Messages waiting or in flight, by function, as their latest statuses say (counts a bounded index; see the README).",
			[]string{"function"}, nil),
	}
	var registered []prometheus.Collector
	collectors := []prometheus.Collector{m.requests, m.received, m.bodyBytes}
	// Without statuses there is nothing to count: no series at all, rather
	// than one that looks like a broker outage at every scrape.
	if k, ok := q.(status.Keeper); !ok || k.KeepsStatuses() {
		collectors = append(collectors, waiting)
	}
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			// Leave the registry as it was, so a caller that handles the
			// error can retry on the same registry.
			for _, done := range registered {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("api: registering metrics: %w", err)
		}
		registered = append(registered, c)
	}
	dead, err := queue.DeadLetterCounter(reg)
	if err != nil {
		for _, done := range registered {
			reg.Unregister(done)
		}
		return nil, fmt.Errorf("api: registering metrics: %w", err)
	}
	m.deadLetters = dead
	// Start the common outcomes at zero, so rate() and alerts see a
	// series before the first error happens.
	for _, code := range []int{http.StatusOK, http.StatusAccepted, http.StatusBadRequest,
		http.StatusRequestEntityTooLarge, http.StatusTooManyRequests, http.StatusServiceUnavailable,
		http.StatusInsufficientStorage} {
		m.requests.WithLabelValues(strconv.Itoa(code))
	}
	return m, nil
}

// waitingTimeout bounds the read of mailbox_waiting at a scrape, which
// waits for the backend's index to catch up.
const waitingTimeout = 2 * time.Second

// waitingCollector exports mailbox_waiting{function} when scraped, from
// Queue.Waiting. When that fails (the broker is down, or the index has
// not caught up within waitingTimeout) it exports nothing.
type waitingCollector struct {
	queue    queue.Queue
	function *names.Bounded
	log      *slog.Logger
	desc     *prometheus.Desc
}

func (c *waitingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *waitingCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), waitingTimeout)
	defer cancel()
	counts, err := c.queue.Waiting(ctx)
	if err != nil {
		c.log.Debug("mailbox_waiting not exported", "error", err)
		return
	}
	// In order, so that which names fit the bound does not depend on
	// the map's order.
	byLabel := map[string]int{}
	for _, fn := range slices.Sorted(maps.Keys(counts)) {
		byLabel[c.function.Label(fn)] += counts[fn]
	}
	for label, n := range byLabel {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), label)
	}
}
