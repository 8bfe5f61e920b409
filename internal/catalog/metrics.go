package catalog

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics carry no function label: the annotation label has a fixed set
// of values.
type metrics struct {
	functions      prometheus.Gauge
	refreshErrors  prometheus.Counter
	lastRefresh    prometheus.Gauge
	badAnnotations *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		functions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mailbox_catalog_functions",
			Help: "Functions in the gateway's list as last read.",
		}),
		refreshErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mailbox_catalog_refresh_errors_total",
			Help: "Reads of the gateway's function list that failed.",
		}),
		lastRefresh: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mailbox_catalog_last_refresh_timestamp_seconds",
			Help: "When the gateway's function list was last read successfully, in seconds since the Unix epoch.",
		}),
		badAnnotations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailbox_catalog_bad_annotations_total",
			Help: "Mailbox annotations ignored for a bad value, counted once per function and value; annotation=unknown for a name the mailbox does not know.",
		}, []string{"annotation"}),
	}
	var registered []prometheus.Collector
	for _, c := range []prometheus.Collector{m.functions, m.refreshErrors, m.lastRefresh, m.badAnnotations} {
		if err := reg.Register(c); err != nil {
			// Leave the registry as it was.
			for _, done := range registered {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("catalog: registering metrics: %w", err)
		}
		registered = append(registered, c)
	}
	for _, name := range annotationNames {
		m.badAnnotations.WithLabelValues(name)
	}
	m.badAnnotations.WithLabelValues(unknownAnnotation)
	return m, nil
}
