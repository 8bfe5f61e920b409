package api

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/names"
	"github.com/openfaas/mailbox/internal/queue"
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

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
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
	var registered []prometheus.Collector
	for _, c := range []prometheus.Collector{m.requests, m.received, m.bodyBytes} {
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
		http.StatusRequestEntityTooLarge, http.StatusServiceUnavailable} {
		m.requests.WithLabelValues(strconv.Itoa(code))
	}
	return m, nil
}
