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

	// The mailbox's token, from the function's secret, e.g.
	// os.ReadFile("/var/openfaas/secrets/mailbox-token").
	const token = "s3cret-token"

	handle := func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		// ... the work failed with a 429 that asked for 30 seconds ...
		// WithToken signs the requeue, and carries the delivery's id and
		// attempts over only when the mailbox signed it, for resize.
		res, err := requeue.Request(r.Context(), nil, mailboxURL, "resize", r, body,
			requeue.WithDelay(30*time.Second), requeue.WithDefaultMaxRetries(5), requeue.WithToken(token))
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

	// A delivery from the mailbox: the first retry of message img-7,
	// signed by the mailbox.
	r := httptest.NewRequest(http.MethodPost, "/", nil)
	r.Header.Set(requeue.HeaderRetries, "1")
	r.Header.Set(requeue.HeaderMaxRetries, "3")
	r.Header.Set(requeue.HeaderMessageID, "img-7")
	r.Header.Set(requeue.HeaderFunction, "resize") // the function it was made for
	signAsTheMailbox(r.Header, nil, token)
	w := httptest.NewRecorder()
	handle(w, r)
	fmt.Print(w.Code, " ")
	_, _ = io.Copy(os.Stdout, w.Body)
	// Output: 202 requeued as img-7, retry 2 of 3, due at 2026-11-23T10:00:30Z
}

func ExampleHeader() {
	const token = "s3cret-token"
	// A delivery of message m-1 after two failed attempts, signed by the
	// mailbox.
	r := httptest.NewRequest(http.MethodPost, "/", nil)
	r.Header.Set("X-Retries", "2")
	r.Header.Set("X-Max-Retries", "5")
	r.Header.Set("X-Delay-Duration", "60")
	r.Header.Set("X-Mailbox-Message-Id", "m-1")
	r.Header.Set("Content-Type", "application/json")
	signAsTheMailbox(r.Header, nil, token)

	show := func(h http.Header) {
		for _, k := range []string{"X-Retries", "X-Max-Retries", "X-Delay-Duration", "X-Mailbox-Message-Id", "Content-Type"} {
			fmt.Printf("%s: %q\n", k, h.Get(k))
		}
	}
	d, err := requeue.Verify(r, nil, token)
	if err != nil {
		fmt.Println(err)
		return
	}
	out, _ := requeue.Header(r.Header, requeue.FromDelivery(d), requeue.WithDelay(1500*time.Millisecond))
	show(out)

	// The same headers from anyone else: dropped, but for X-Retries, which
	// still counts up.
	r.Header.Del(requeue.HeaderDeliverySignature)
	_, err = requeue.Verify(r, nil, token)
	fmt.Println(err)
	out, _ = requeue.Header(r.Header, requeue.WithDelay(1500*time.Millisecond))
	show(out)
	// Output:
	// X-Retries: "3"
	// X-Max-Retries: "5"
	// X-Delay-Duration: "1.5s"
	// X-Mailbox-Message-Id: "m-1"
	// Content-Type: "application/json"
	// requeue: the request carries no X-Mailbox-Delivery-Signature
	// X-Retries: "3"
	// X-Max-Retries: ""
	// X-Delay-Duration: "1.5s"
	// X-Mailbox-Message-Id: ""
	// Content-Type: "application/json"
}
