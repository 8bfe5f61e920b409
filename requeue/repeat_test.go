package requeue_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/openfaas/mailbox/requeue"
)

// A requeue repeated while the first is still waiting (a POST retried
// after a timeout) is answered 200 "repeat": the message is stored, so
// it is no error.
func TestRepeatIsNoError(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, `{"status":"repeat","repeat":true,"id":"m-1","function":"fn","retries":1}`)
	}))
	t.Cleanup(srv.Close)
	res, err := requeue.Request(t.Context(), nil, srv.URL, "fn", incoming(), nil)
	if err != nil || res.Status != requeue.StatusRepeat || !res.Repeat || res.ID != "m-1" {
		t.Fatalf("Request = %+v, %v; want the repeat, no error", res, err)
	}
}
