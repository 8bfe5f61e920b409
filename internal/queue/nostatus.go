package queue

import (
	"context"
	"errors"

	"github.com/openfaas/mailbox/internal/status"
)

// ErrStatusesOff means the mailbox records no statuses (the statuses
// setting is false): there is no status to read and nothing to count.
var ErrStatusesOff = errors.New("queue: statuses are off (statuses=false)")

// WithoutStatuses returns q recording no statuses: RecordStatus stores
// nothing, Status and Waiting answer ErrStatusesOff without reading the
// broker (so no index of the statuses is built), and Reserve reserves
// nothing, as the quotas count statuses. KeepsStatuses reports false, so
// a status.Recorder on it does no work at all. Everything else is q's.
func WithoutStatuses(q Queue) Queue { return noStatuses{q} }

type noStatuses struct{ Queue }

func (noStatuses) RecordStatus(context.Context, status.Status) error { return nil }

func (noStatuses) Status(context.Context, string) (status.Status, error) {
	return status.Status{}, ErrStatusesOff
}

func (noStatuses) Waiting(context.Context) (map[string]int, error) { return nil, ErrStatusesOff }

func (noStatuses) Reserve(context.Context, ...status.Claim) (func(), error) { return func() {}, nil }

// KeepsStatuses is false: see status.Recorder.
func (noStatuses) KeepsStatuses() bool { return false }
