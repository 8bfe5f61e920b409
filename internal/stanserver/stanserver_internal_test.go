package stanserver

import (
	"testing"
	"time"
)

// The dead-letter channel keeps records 24h past the dead-letter
// retention, longer than the server keeps anything else if need be, and
// forever without a retention.
func TestDeadLetterChannelAge(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		retention, want time.Duration
	}{
		{0, -1},
		{14 * 24 * time.Hour, 15 * 24 * time.Hour},
	} {
		limits := perChannel(Options{DeadLetterChannel: "mb.deadletter", StatusChannel: "mb.status", DeadLetterRetention: tc.retention})
		if got := limits["mb.deadletter"].MaxAge; got != tc.want {
			t.Errorf("retention %v: dead-letter MaxAge %v, want %v", tc.retention, got, tc.want)
		}
	}
}
