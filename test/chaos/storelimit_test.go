package chaos

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/openfaas/mailbox/test/e2e/bed"
)

// faultStoreLimit fills JetStream's own storage limit with a stream of
// another writer, under load, until the mailbox refuses requeues, then
// deletes it. JetStream only.
const faultStoreLimit = "store-limit"

// fillerStream is the other writer's stream.
const fillerStream = "chaos-filler"

// storeLimitFault fills the bed's JetStream server up to its max_file_store
// (by default 75% of the space free on the store's file system when it
// started, so the disk itself keeps room) with a stream of its own, and
// checks from outside that requeues are refused with 507 naming the cause,
// with Retry-After, in bounded time; then deletes the stream and wants
// requeues accepted again within recoverBound, with nothing restarted.
func storeLimitFault(ctx context.Context, t *testing.T, b *bed.Bed, rec *record) error {
	fnBefore, err := processes(binaries.Functions[bed.Mailbox])
	if err != nil {
		return err
	}
	nc, js, err := connectJetStream(bed.JetStreamURL)
	if err != nil {
		return err
	}
	defer nc.Close()
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := js.CreateStream(cctx, jetstream.StreamConfig{Name: fillerStream, Subjects: []string{fillerStream}, Storage: jetstream.FileStorage}); err != nil {
		return fmt.Errorf("create the filler stream: %w", err)
	}
	payload := make([]byte, 256<<10) // under a server's default max payload, 1 MiB
	for i := 0; ; i++ {
		_, err := js.Publish(cctx, fillerStream, payload)
		if isInsufficient(err) {
			t.Logf("store-limit: the filler stream refused after %d MiB: %v", i/4, err)
			break
		}
		if err != nil {
			return fmt.Errorf("fill the store: %w", err)
		}
		if i > 4<<10 {
			return errors.New("fill the store: 1 GiB stored and not refused")
		}
	}
	filled := time.Now()
	err = poll(ctx, 2*time.Minute, "a requeue refused with 507, a cause and Retry-After", func() error {
		for _, m := range rec.refusedSince(filled) {
			if m.status == http.StatusInsufficientStorage {
				return nil
			}
		}
		return errors.New("no requeue sent since the store filled was refused with 507")
	})
	if err != nil {
		return err
	}
	select {
	case <-time.After(5 * time.Second):
	case <-ctx.Done():
	}
	if err := js.DeleteStream(cctx, fillerStream); err != nil {
		return fmt.Errorf("delete the filler stream: %w", err)
	}
	removed := time.Now()
	if err := poll(ctx, recoverBound, "a requeue accepted with the filler stream deleted", func() error {
		if a, _, _ := rec.resumed(removed); a.IsZero() {
			return errors.New("none")
		}
		return nil
	}); err != nil {
		return err
	}
	t.Logf("store-limit: filler deleted %s after the store filled", removed.Sub(filled).Round(time.Millisecond))
	if err := answeredWhileFull(ctx, t, rec, filled, removed); err != nil {
		return err
	}
	// Messages that fell due while the store was full: the server fired
	// their schedules and could not store what it fired (the mailbox
	// fires them again, internal/queue/jetstream rearm.go).
	if err := poll(ctx, 2*time.Minute, "every message due while the store was full called, nothing restarted", func() error {
		if ids := rec.uncalledDue(removed); len(ids) > 0 {
			return fmt.Errorf("%d accepted messages due before the filler was deleted never called, such as %v", len(ids), ids[:min(5, len(ids))])
		}
		return nil
	}); err != nil {
		return err
	}
	t.Logf("store-limit: every message due while the store was full called %s after the filler was deleted", time.Since(removed).Round(time.Millisecond))
	fnAfter, err := processes(binaries.Functions[bed.Mailbox])
	if err != nil {
		return err
	}
	if len(fnBefore) != 1 || len(fnAfter) != 1 || fnBefore[0].hostPID != fnAfter[0].hostPID {
		return fmt.Errorf("mailbox-fn restarted during the store-limit fault: processes %v, then %v", fnBefore, fnAfter)
	}
	return nil
}

// isInsufficient reports whether err is JetStream's refusal for want of
// storage: the account's limit, the server's max_file_store, or no room
// for a stream.
func isInsufficient(err error) bool {
	apiErr, ok := errors.AsType[*jetstream.APIError](err)
	return ok && (apiErr.ErrorCode == 10002 || apiErr.ErrorCode == 10023 || apiErr.ErrorCode == 10047)
}

// uncalledDue is the ids of the accepted messages due before t without a
// call.
func (r *record) uncalledDue(t time.Time) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, m := range r.order {
		if m.accepted() && len(m.calls) == 0 && m.sent.Add(m.delay).Before(t) {
			out = append(out, m.id)
		}
	}
	return out
}
