package jetstream

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/openfaas/mailbox/internal/queue"
)

// A write the server refuses for want of storage was reported as the
// broker being unreachable: it is queue.ErrStorageFull, so the API
// answers 507; a write not answered in time is queue.ErrTimeout, still
// an ErrUnavailable (503).
func TestPublishErrorClasses(t *testing.T) {
	t.Parallel()
	apiErr := func(code jetstream.ErrorCode, desc string) error {
		return fmt.Errorf("nats: %w", &jetstream.APIError{Code: 503, ErrorCode: code, Description: desc})
	}
	for _, tc := range []struct {
		name string
		err  error
		want error
		not  error
	}{
		{"server max_store", apiErr(10023, "insufficient resources"), queue.ErrStorageFull, queue.ErrUnavailable},
		{"account limit", apiErr(10002, "resource limits exceeded for account"), queue.ErrStorageFull, queue.ErrUnavailable},
		{"storage resources", apiErr(10047, "insufficient storage resources available"), queue.ErrStorageFull, queue.ErrUnavailable},
		{"no answer in time", context.DeadlineExceeded, queue.ErrTimeout, queue.ErrStorageFull},
		{"nats timeout", nats.ErrTimeout, queue.ErrTimeout, queue.ErrStorageFull},
		{"other server error", apiErr(10077, "stream store failed"), queue.ErrUnavailable, queue.ErrTimeout},
		{"connection closed", nats.ErrConnectionClosed, queue.ErrUnavailable, queue.ErrTimeout},
	} {
		err := publishError("mailbox.due.fn", tc.err)
		if !errors.Is(err, tc.want) || errors.Is(err, tc.not) {
			t.Errorf("%s: publishError = %v, want it to be %v and not %v", tc.name, err, tc.want, tc.not)
		}
	}
	if err := publishError("s", context.DeadlineExceeded); !errors.Is(err, queue.ErrUnavailable) {
		t.Errorf("a timeout is not an ErrUnavailable: %v", err)
	}
}
