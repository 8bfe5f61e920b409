// Package function is a function built with the mailbox-go template: the
// template's main calls New once at start-up and serves the handler it
// returns behind of-watchdog.
package function

import (
	"fmt"
	"io"
	"net/http"
)

// New builds the function from its environment ("key=value" pairs, as
// os.Environ returns them). logs is the function's log output. close is
// called once, after the last request, before the process exits.
func New(environ []string, logs io.Writer) (h http.Handler, close func() error, err error) {
	h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "Body: %s\n", body)
	})
	return h, func() error { return nil }, nil
}
