package metric

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestShared(t *testing.T) {
	reg := prometheus.NewRegistry()
	newCounter := func() *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "shared_total", Help: "h"}, []string{"l"})
	}
	a, err := Shared(reg, newCounter())
	if err != nil {
		t.Fatal(err)
	}
	b, err := Shared(reg, newCounter())
	if err != nil || a != b {
		t.Fatalf("second registration: %p, %v; want the first counter %p", b, err, a)
	}
	// Another type under the name is an error, not a panic.
	if _, err := Shared(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "shared_total", Help: "h"}, []string{"l"})); err == nil {
		t.Fatal("a gauge under a counter's name: no error")
	}
}
