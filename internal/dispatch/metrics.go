package dispatch

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/names"
	"github.com/openfaas/mailbox/internal/queue"
)

// metrics are labelled by function through names.Bounded: functions are
// named by whoever requeues.
type metrics struct {
	delivered     *prometheus.CounterVec
	retried       *prometheus.CounterVec
	deferred      *prometheus.CounterVec
	deadLetters   *prometheus.CounterVec // {function, reason}, shared with the API
	duration      *prometheus.HistogramVec
	lateness      *prometheus.HistogramVec
	callbacks     *prometheus.CounterVec
	gatewayUp     prometheus.Gauge
	gatewayPauses prometheus.Counter
	function      *names.Bounded
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	byFunction := []string{"function"}
	m := &metrics{
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailbox_delivered_total",
			Help: "Messages the function accepted (2xx), by function.",
		}, byFunction),
		retried: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailbox_retries_scheduled_total",
			Help: "Failed deliveries scheduled again, by function.",
		}, byFunction),
		deferred: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailbox_deferred_total",
			Help: "Due messages put back without an attempt because their function's rate or concurrency limit was reached, by function.",
		}, byFunction),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mailbox_invocation_duration_seconds",
			Help:    "Time from calling the gateway to its answer, by function.",
			Buckets: prometheus.ExponentialBuckets(0.005, 4, 8),
		}, byFunction),
		lateness: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mailbox_delivery_lateness_seconds",
			Help:    "Time from a message's due time to its call starting, by function.",
			Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30},
		}, byFunction),
		callbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailbox_callbacks_total",
			Help: "Calls to callback URLs, by what followed: ack (delivered), retry or dead-letter.",
		}, []string{"action"}),
		gatewayUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mailbox_gateway_up",
			Help: "1 while deliveries proceed, 0 while they are paused because the gateway cannot be reached.",
		}),
		gatewayPauses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mailbox_gateway_pauses_total",
			Help: "Times deliveries paused because the gateway could not be reached.",
		}),
		function: names.NewBounded(names.MaxLabels),
	}
	dead, err := queue.DeadLetterCounter(reg)
	m.deadLetters = dead
	errs := []error{err}
	for _, c := range []prometheus.Collector{m.delivered, m.retried, m.deferred, m.duration, m.lateness, m.callbacks, m.gatewayUp, m.gatewayPauses} {
		errs = append(errs, reg.Register(c))
	}
	return m, errors.Join(errs...)
}
