package dispatch

import (
	"math"
	"testing"
	"time"
)

// TestCallbackWaitBounded: whatever a stored envelope's holds say (it may
// be forged), the wait is between a second and 45 seconds and never
// panics; a negative holds once shifted by a negative count.
func TestCallbackWaitBounded(t *testing.T) {
	t.Parallel()
	for _, holds := range []int{math.MinInt, -1, 0, 1, 5, 6, 64, math.MaxInt} {
		if w := callbackWait(holds); w < time.Second || w > 45*time.Second {
			t.Errorf("callbackWait(%d) = %s, want 1s to 45s", holds, w)
		}
	}
}
