// Package nocache keeps go test from caching a pass of a test that runs
// what it builds itself. go test reuses a result
// while the test binary, its flags, the environment variables the test
// read and the files under test/ it opened are unchanged; what such a test
// really runs, the connector and the functions built by go build from the
// root module, is none of those. A test cannot set its own -count=1, and
// the environment go test compares is its own, so a variable the test
// reads cannot change per run either. But go test caches no run that
// opened a file modified less than two seconds before it looks: this
// file is dated a day ahead at every run.
package nocache

import (
	"os"
	"testing"
	"time"
)

// Mark makes go test cache no pass of the running test: it writes and
// opens .never-cached (in .gitignore) in the test's directory, dated a
// day ahead.
func Mark(t *testing.T) {
	t.Helper()
	const name = ".never-cached"
	future := time.Now().Add(24 * time.Hour)
	if err := os.WriteFile(name, []byte("see test/internal/nocache\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(name, future, future); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
}
