package limit

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/openfaas/mailbox/internal/jsserver/jsservertest"
	"github.com/openfaas/mailbox/internal/poll"
)

// publishRaw sends data on the membership subject as anyone on NATS can.
func publishRaw(t *testing.T, url string, msgs ...any) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for _, m := range msgs {
		data, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Publish("test.replicas", data); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// TestForgedHeartbeats: heartbeats come unauthenticated over core NATS. A
// forged one with out-of-range fields is ignored, and one that is taken
// expires like any silent replica: it cannot shrink the real replicas'
// shares for ever.
func TestForgedHeartbeats(t *testing.T) {
	t.Parallel()
	url := jsservertest.Start(t).URL()
	a := start(t, url)
	waitStable(t, 1, a)
	lim := Limits{MaxConcurrency: 10}

	publishRaw(t, url,
		// The attack of the review: a heartbeat so long it is never silent.
		map[string]any{"id": "forged-forever", "heartbeat_ms": int64(1) << 50, "horizon_ms": horizon.Milliseconds()},
		map[string]any{"id": "forged-negative", "heartbeat_ms": -5, "horizon_ms": horizon.Milliseconds()},
		map[string]any{"id": "forged-zero", "heartbeat_ms": 0, "horizon_ms": horizon.Milliseconds()},
		map[string]any{"id": strings.Repeat("x", 1000), "heartbeat_ms": hb.Milliseconds(), "horizon_ms": horizon.Milliseconds()},
		map[string]any{"id": "bad id\n", "heartbeat_ms": hb.Milliseconds(), "horizon_ms": horizon.Milliseconds()},
		map[string]any{"id": "forged-horizon", "heartbeat_ms": hb.Milliseconds(), "horizon_ms": -1},
		map[string]any{"id": "forged-over", "heartbeat_ms": hb.Milliseconds(), "horizon_ms": horizon.Milliseconds(), "over": []string{"Not A Name"}},
		map[string]any{"id": "forged-long-over", "heartbeat_ms": hb.Milliseconds(), "horizon_ms": horizon.Milliseconds(), "over": make([]string, maxOver+1)},
	)
	// One well-formed forged heartbeat is taken, then expires.
	publishRaw(t, url, map[string]any{"id": "forged-once", "heartbeat_ms": hb.Milliseconds(), "horizon_ms": horizon.Milliseconds()})
	poll.Until(t, wait, "the forged replicas gone, the share whole again", func() bool {
		return slices.Equal(a.currentMembers(), []string{a.id}) && a.testCap("fn", lim) == 10
	})
}

// TestForgedReplicasBounded: a flood of forged replica ids does not grow
// the membership, or the memory it takes, without bound.
func TestForgedReplicasBounded(t *testing.T) {
	t.Parallel()
	url := jsservertest.Start(t).URL()
	a := start(t, url)
	waitStable(t, 1, a)
	var msgs []any
	for i := range maxPeers + 50 {
		msgs = append(msgs, map[string]any{"id": fmt.Sprintf("forged-%d", i), "heartbeat_ms": hb.Milliseconds(), "horizon_ms": horizon.Milliseconds()})
	}
	publishRaw(t, url, msgs...)
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if n := len(a.currentMembers()); n > maxPeers+1 {
			t.Fatalf("%d members, want at most %d", n, maxPeers+1)
		}
	}
	poll.Until(t, wait, "the forged replicas gone", func() bool { return len(a.currentMembers()) == 1 })
}
