// Package jsservertest runs an embedded JetStream server for tests, on a
// store in the test's temporary directory, and can restart it on the same
// address and data as after a crash.
package jsservertest

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/servertest"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/openfaas/mailbox/internal/envelope"
	"github.com/openfaas/mailbox/internal/jsserver"
	"github.com/openfaas/mailbox/internal/queue"
)

// Server is an embedded server owned by one test; it keeps its address and
// data across restarts.
type Server struct{ *servertest.Server }

// Start runs a server that stops when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartIn(t, t.TempDir())
}

// StartIn is Start storing in dir, which the test provides (a small
// file system, to be filled).
func StartIn(t testing.TB, dir string) *Server {
	t.Helper()
	return &Server{servertest.StartIn(t, dir, func(dir string, port int) (string, func(), error) {
		srv, err := jsserver.Start(jsserver.Options{Dir: dir, Port: port})
		if err != nil {
			return "", nil, err
		}
		return srv.URL(), srv.Shutdown, nil
	})}
}

// DeadLetters reads every dead letter the dead-letter stream keeps,
// skipping removals and markers.
func DeadLetters(t testing.TB, natsURL, stream string) []*envelope.Envelope {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return nil // not created yet: no dead letters
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []*envelope.Envelope
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			continue // deleted
		}
		if r, err := queue.DecodeRecord(seq, m.Time, m.Data); err == nil && r.Data == nil {
			continue
		}
		e, err := envelope.Decode(m.Data)
		if err != nil {
			t.Errorf("dead letter %d: %v", seq, err)
			continue
		}
		got = append(got, e)
	}
	return got
}

// Cluster is an embedded JetStream cluster on 127.0.0.1 owned by one test.
type Cluster struct {
	t       testing.TB
	dirs    []string
	ports   []int // client ports
	routes  []int // cluster ports
	servers []*jsserver.Server
}

// StartCluster runs n servers that route to each other and stop when the
// test ends.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t, servers: make([]*jsserver.Server, n)}
	for range n {
		c.dirs = append(c.dirs, t.TempDir())
		c.ports = append(c.ports, freePort(t))
		c.routes = append(c.routes, freePort(t))
	}
	t.Cleanup(func() {
		for i := range c.servers {
			c.Stop(i)
		}
	})
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = c.start(i) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func (c *Cluster) start(i int) error {
	var routes []string
	for j, p := range c.routes {
		if j != i {
			routes = append(routes, "nats://127.0.0.1:"+strconv.Itoa(p))
		}
	}
	srv, err := jsserver.Start(jsserver.Options{
		Dir:     c.dirs[i],
		Port:    c.ports[i],
		Name:    "mailbox-" + strconv.Itoa(i),
		Cluster: jsserver.Cluster{Name: "mailbox", Port: c.routes[i], Routes: routes},
	})
	c.servers[i] = srv
	return err
}

// URL lists every member, comma-separated, as a client's server list.
func (c *Cluster) URL() string {
	var urls []string
	for _, p := range c.ports {
		urls = append(urls, "nats://127.0.0.1:"+strconv.Itoa(p))
	}
	return strings.Join(urls, ",")
}

// Stop stops member i; it may be called more than once.
func (c *Cluster) Stop(i int) {
	if c.servers[i] != nil {
		c.servers[i].Shutdown()
		c.servers[i] = nil
	}
}

// Start starts member i again with its stored data.
func (c *Cluster) Start(i int) {
	c.t.Helper()
	if err := c.start(i); err != nil {
		c.t.Fatal(err)
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// ConsumerInfo describes the connectors' durable consumer, "connector" on
// the stream "mailbox", as the server at natsURL knows it.
func ConsumerInfo(natsURL string) (*jetstream.ConsumerInfo, error) {
	nc, err := nats.Connect(natsURL)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := js.Consumer(ctx, "mailbox", "connector")
	if err != nil {
		return nil, err
	}
	return c.Info(ctx)
}
