// Package poll waits in tests for a condition instead of sleeping a fixed
// time.
package poll

import (
	"testing"
	"time"
)

// Until calls cond every few milliseconds until it reports true, and fails
// the test with msg if that takes longer than timeout.
func Until(t testing.TB, timeout time.Duration, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v: %s", timeout, msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
