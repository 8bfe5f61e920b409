package chaos

import (
	"net/http"

	"github.com/openfaas/mailbox/test/e2e/bed"
)

// serveScenario runs two mailbox serve replicas (the standalone binary:
// API and connector in one process) on the bed's NATS server of backend,
// delivering through the gateway; requeues go to them in turn, with the
// token, as a user's load balancer would send them. Faults: a SIGKILL of
// one replica, then of the other, each started again at once with its
// client id, then of the NATS server.
func serveScenario(backend string) scenario {
	return scenario{name: "serve-" + backend, backend: backend, serve: true, faults: []string{bed.ServeA, bed.ServeB, faultNATS}}
}

// startServe starts the replicas and returns them as the load's target.
func startServe(b *bed.Bed) (target, error) {
	token, err := b.StartServe()
	if err != nil {
		return target{}, err
	}
	var urls []string
	for _, name := range []string{bed.ServeA, bed.ServeB} {
		urls = append(urls, bed.ServeURL(name)+"/deadletter/"+bed.Random)
	}
	return target{urls: urls, header: http.Header{"Authorization": {"Bearer " + token}}, prefix: bed.ServePrefix}, nil
}
