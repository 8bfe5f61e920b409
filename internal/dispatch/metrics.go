package dispatch

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/queue"
)

type metrics struct {
	delivered   prometheus.Counter
	retried     prometheus.Counter
	deferred    prometheus.Counter
	deadLetters *prometheus.CounterVec
	duration    prometheus.Histogram
	lateness    prometheus.Histogram
	gatewayUp   prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mailbox_delivered_total",
			Help: "Messages the function accepted (2xx).",
		}),
		retried: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mailbox_retries_scheduled_total",
			Help: "Failed deliveries scheduled again after their delay.",
		}),
		deferred: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mailbox_deferred_total",
			Help: "Due messages put back without an attempt because their function's rate or concurrency limit was reached.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mailbox_invocation_duration_seconds",
			Help:    "Time from calling the gateway to its answer.",
			Buckets: prometheus.ExponentialBuckets(0.005, 4, 8),
		}),
		lateness: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mailbox_delivery_lateness_seconds",
			Help:    "Time from a message's due time to its delivery starting.",
			Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30},
		}),
		gatewayUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mailbox_gateway_up",
			Help: "1 while deliveries proceed, 0 while they are paused because the gateway cannot be reached.",
		}),
	}
	dead, err := queue.DeadLetterCounter(reg)
	m.deadLetters = dead
	errs := []error{err}
	for _, c := range []prometheus.Collector{m.delivered, m.retried, m.deferred, m.duration, m.lateness, m.gatewayUp} {
		errs = append(errs, reg.Register(c))
	}
	return m, errors.Join(errs...)
}
