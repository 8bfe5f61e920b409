// Package metric registers metrics that several parts of one process
// share: the API, the connector and a backend each ask for the same
// counter, and they count into one series when they share a registry (as
// in mailbox serve).
package metric

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Shared registers c on reg and returns it, or returns the collector
// already registered under c's name when it is of c's type. Any other
// registration error is returned.
func Shared[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var already prometheus.AlreadyRegisteredError
	if errors.As(err, &already) {
		if existing, ok := already.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	var zero C
	return zero, err
}
