package requeue_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"time"

	"github.com/openfaas/mailbox/requeue"
)

// A function that cannot do its work now hands the request it is handling
// to the mailbox, and answers 2xx once the mailbox has it.
func ExampleRequest() {
	// Stands in for the mailbox: it answers as the mailbox does.
	mailbox := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, `{"status":"scheduled","id":%q,"function":"resize","retries":%s,"max_retries":%s,"due_at":"2026-11-23T10:00:30Z"}`,
			r.Header.Get(requeue.HeaderMessageID), r.Header.Get(requeue.HeaderRetries), r.Header.Get(requeue.HeaderMaxRetries))
	}))
	defer mailbox.Close()
	// In OpenFaaS: http://gateway.openfaas:8080/function/mailbox
	mailboxURL := mailbox.URL

	handle := func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		// ... the work failed with a 429 that asked for 30 seconds ...
		res, err := requeue.Request(r.Context(), nil, mailboxURL, "resize", r, body,
			requeue.WithDelay(30*time.Second), requeue.WithDefaultMaxRetries(5))
		switch {
		case err == nil:
			w.WriteHeader(http.StatusAccepted)
			fmt.Fprintf(w, "requeued as %s, retry %d of %d, due at %s\n",
				res.ID, res.Retries, res.MaxRetries, res.DueAt.Format(time.RFC3339))
		case errors.Is(err, requeue.ErrMaxRetries):
			// Kept as a dead letter: answer 2xx so the mailbox does not
			// retry this delivery as well.
			fmt.Fprintln(w, "retries spent:", err)
		default:
			http.Error(w, err.Error(), http.StatusBadGateway)
		}
	}

	// A delivery from the mailbox: the first retry of message img-7.
	r := httptest.NewRequest(http.MethodPost, "/", nil)
	r.Header.Set(requeue.HeaderRetries, "1")
	r.Header.Set(requeue.HeaderMaxRetries, "3")
	r.Header.Set(requeue.HeaderMessageID, "img-7")
	w := httptest.NewRecorder()
	handle(w, r)
	fmt.Print(w.Code, " ")
	_, _ = io.Copy(os.Stdout, w.Body)
	// Output: 202 requeued as img-7, retry 2 of 3, due at 2026-11-23T10:00:30Z
}

func ExampleHeader() {
	// The headers of a delivery of message m-1 after two failed attempts.
	in := http.Header{}
	in.Set("X-Retries", "2")
	in.Set("X-Max-Retries", "5")
	in.Set("X-Delay-Duration", "60")
	in.Set("X-Mailbox-Message-Id", "m-1")
	in.Set("Content-Type", "application/json")

	out, err := requeue.Header(in, requeue.WithDelay(1500*time.Millisecond))
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, k := range []string{"X-Retries", "X-Max-Retries", "X-Delay-Duration", "X-Mailbox-Message-Id", "Content-Type"} {
		fmt.Printf("%s: %s\n", k, out.Get(k))
	}
	// Output:
	// X-Retries: 3
	// X-Max-Retries: 5
	// X-Delay-Duration: 1.5s
	// X-Mailbox-Message-Id: m-1
	// Content-Type: application/json
}
