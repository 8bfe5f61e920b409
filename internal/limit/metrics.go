package limit

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	replicas prometheus.Gauge
	deferred *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		replicas: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mailbox_limit_replicas",
			Help: "Connector replicas this one counts when it divides the functions' limits, itself included.",
		}),
		deferred: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailbox_limit_deferred_total",
			Help: "Messages turned away because a function's limit left no room for them now, by the limit that did it (rate or concurrency).",
		}, []string{"function", "limit"}),
	}
	m.replicas.Set(1)
	return m, errors.Join(reg.Register(m.replicas), reg.Register(m.deferred))
}
