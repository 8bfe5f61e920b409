// Package bed runs the mailbox inside real OpenFaaS: the Community Edition
// gateway and queue-worker, NATS Streaming and NATS JetStream servers as
// processes of their own, a faas-provider provider that runs each function
// as a local process, the mailbox function built through the repository's
// template, the connector, the example function and the test functions.
//
// Everything listens on 127.0.0.1 at fixed ports, which is safe only in a
// network namespace of the bed's own (RunInOwnNetwork): the gateway binds
// :8080 and :8082 on every interface whatever it is told.
//
//	client ──▶ gateway :8080 ──▶ provider :8081 ──▶ function processes
//	              │ /async-function                    │ mailbox-fn: requeue API
//	              ▼                                     ▼
//	      NATS Streaming :4222 ◀── queue-worker   mailbox channels/streams
//	                                                    │ (NATS Streaming :4222
//	                                                    │  or JetStream :4223)
//	              gateway ◀──────── connector :8091 ◀───┘
//
// The gateway asks Prometheus for invocation counts when it lists
// functions and panics when none answers, so the bed serves an empty one.
package bed

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	sdk "github.com/openfaas/go-sdk"
	"github.com/openfaas/go-sdk/stack"

	"github.com/openfaas/mailbox/test/internal/proc"
)

// Addresses in the bed's network namespace.
const (
	GatewayURL        = "http://127.0.0.1:8080"
	ConnectorURL      = "http://127.0.0.1:8091"
	NATSStreamingURL  = "nats://127.0.0.1:4222"
	JetStreamURL      = "nats://127.0.0.1:4223"
	providerPort      = 8081
	prometheusAddress = "127.0.0.1:9090"
	apiAddress        = "127.0.0.1:9100"
)

// Backends the mailbox can run on in the bed.
const (
	Stan      = "stan"
	JetStream = "jetstream"
)

// Prefix is the mailbox's channel prefix, and JetStream's stream name.
const (
	Prefix = "mailbox"
	Stream = "mailbox"
)

// startTimeout bounds the wait for each component to be ready.
const startTimeout = 60 * time.Second

// Config says what the bed runs.
type Config struct {
	// Backend is the mailbox's queue: Stan or JetStream. The gateway and
	// the queue-worker use NATS Streaming either way, as in OpenFaaS CE.
	Backend string
	Bin     Binaries
	// Stack is the repository's stack.yml: the mailbox and example
	// functions are deployed with its environment, labels and
	// annotations, pointed at the bed's servers.
	Stack *stack.Services
	// Dir holds the servers' data, the secrets and the functions' files.
	Dir string
	// Log receives every component's output, one line at a time
	// prefixed with its name.
	Log io.Writer
}

// Bed is a running test bed.
type Bed struct {
	cfg Config
	// User and Password are the gateway's basic-auth credentials, kept in
	// Secrets as OpenFaaS keeps them.
	User, Password string
	Secrets        string
	// API is the rate-limited API the example function calls.
	API *API
	// Client talks to the gateway with the credentials, as faas-cli does.
	Client *sdk.Client

	mu    sync.Mutex
	procs map[string]*proc.Process
	stops []func()
}

// Start starts everything and deploys the functions through the gateway;
// on error what was started is stopped.
func Start(ctx context.Context, cfg Config) (*Bed, error) {
	if cfg.Backend != Stan && cfg.Backend != JetStream {
		return nil, fmt.Errorf("backend %q is not %s or %s", cfg.Backend, Stan, JetStream)
	}
	b := &Bed{cfg: cfg, User: "admin", procs: map[string]*proc.Process{}}
	if err := b.up(ctx); err != nil {
		// A half-started bed would keep its fixed ports from the next.
		b.Close()
		return nil, err
	}
	return b, nil
}

// up starts the components in the order they need each other.
func (b *Bed) up(ctx context.Context) error {
	var err error
	if b.Password, err = randomHex(16); err != nil {
		return err
	}
	b.Secrets = filepath.Join(b.cfg.Dir, "secrets")
	if err := b.SetPassword(b.Password); err != nil {
		return err
	}
	if err := b.serve(prometheusAddress, http.HandlerFunc(emptyPrometheus)); err != nil {
		return err
	}
	b.API = &API{}
	if err := b.serve(apiAddress, b.API); err != nil {
		return err
	}
	if err := b.StartNATSStreaming(); err != nil {
		return err
	}
	if b.cfg.Backend == JetStream {
		if err := b.StartJetStream(); err != nil {
			return err
		}
	}
	if err := b.startProvider(); err != nil {
		return err
	}
	if err := b.StartGateway(); err != nil {
		return err
	}
	if err := b.startQueueWorker(); err != nil {
		return err
	}
	gw, _ := url.Parse(GatewayURL)
	b.Client = sdk.NewClient(gw, &sdk.BasicAuth{Username: b.User, Password: b.Password}, http.DefaultClient)
	if err := b.deployFunctions(ctx); err != nil {
		return err
	}
	return b.StartConnector()
}

// NATSURL is the mailbox's NATS server.
func (b *Bed) NATSURL() string {
	if b.cfg.Backend == JetStream {
		return JetStreamURL
	}
	return NATSStreamingURL
}

// Backend is the mailbox's queue backend.
func (b *Bed) Backend() string { return b.cfg.Backend }

// StartNATSStreaming starts NATS Streaming, cluster faas-cluster, on a
// file store so that a restart keeps the mailbox's messages (OpenFaaS CE
// starts it with --store memory, which keeps nothing).
func (b *Bed) StartNATSStreaming() error {
	return b.start("nats-streaming", b.cfg.Bin.StreamingServer, nil, logged("Streaming Server is ready"),
		"-cid", "faas-cluster", "-a", "127.0.0.1", "-p", "4222",
		"-st", "file", "--dir", filepath.Join(b.cfg.Dir, "nats-streaming"))
}

// StartJetStream starts the NATS server with JetStream.
func (b *Bed) StartJetStream() error {
	return b.start("nats-jetstream", b.cfg.Bin.NATSServer, nil, logged("Server is ready"),
		"-js", "-sd", filepath.Join(b.cfg.Dir, "jetstream"), "-a", "127.0.0.1", "-p", "4223")
}

// StartGateway starts the gateway with basic auth, NATS Streaming for
// asynchronous invocations and the bed's provider. NATS Streaming must be
// up: the gateway exits when it cannot reach it at start.
func (b *Bed) StartGateway() error {
	return b.start("gateway", b.cfg.Bin.Gateway, []string{
		"functions_provider_url=http://127.0.0.1:" + fmt.Sprint(providerPort) + "/",
		"faas_nats_address=127.0.0.1",
		"faas_nats_port=4222",
		"faas_nats_cluster_name=faas-cluster",
		"faas_prometheus_host=127.0.0.1",
		"faas_prometheus_port=9090",
		"basic_auth=true",
		"secret_mount_path=" + b.Secrets,
		"read_timeout=65s",
		"write_timeout=65s",
		"upstream_timeout=60s",
		"scale_from_zero=false",
	}, listening("127.0.0.1:8080"))
}

// startQueueWorker starts the queue-worker, which calls functions through
// the gateway's /function/ route, which needs no credentials. It takes
// one message at a time and never retries: a failed asynchronous call is
// the function's to hand to the mailbox.
func (b *Bed) startQueueWorker() error {
	return b.start("queue-worker", b.cfg.Bin.QueueWorker, []string{
		"faas_nats_address=127.0.0.1",
		"faas_nats_port=4222",
		"faas_nats_cluster_name=faas-cluster",
		"faas_gateway_address=127.0.0.1",
		"faas_gateway_port=8080",
		"ack_wait=60s",
	}, logged("Listening on [faas-request]"))
}

// StartConnector starts the connector, reading the gateway's credentials
// from the secrets folder.
func (b *Bed) StartConnector() error {
	return b.start("connector", b.cfg.Bin.Connector, append(b.mailboxEnv(),
		"gateway_url="+GatewayURL,
		"basic_auth=true",
		"secret_mount_path="+b.Secrets,
		"listen=127.0.0.1:8091",
		"upstream_timeout=30s",
		"log_format=json",
	), listening("127.0.0.1:8091"))
}

// mailboxEnv is the queue settings the mailbox function and the
// connector share.
func (b *Bed) mailboxEnv() []string {
	return []string{
		"backend=" + b.cfg.Backend,
		"nats_url=" + b.NATSURL(),
		"nats_cluster_id=faas-cluster",
		"channel_prefix=" + Prefix,
		"jetstream_stream=" + Stream,
	}
}

// Stop stops the named component (nats-streaming, nats-jetstream,
// gateway, queue-worker, connector) with SIGTERM, or SIGKILL when kill.
func (b *Bed) Stop(name string, kill bool) error {
	b.mu.Lock()
	p := b.procs[name]
	delete(b.procs, name)
	b.mu.Unlock()
	if p == nil {
		return fmt.Errorf("%s is not running", name)
	}
	if kill {
		_ = p.Signal(os.Kill)
	}
	_ = p.Stop(15 * time.Second)
	return nil
}

// Output is what the named component printed so far.
func (b *Bed) Output(name string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if p := b.procs[name]; p != nil {
		return p.Output()
	}
	return ""
}

// Close stops everything, the last started first.
func (b *Bed) Close() {
	b.mu.Lock()
	procs := b.procs
	b.procs = map[string]*proc.Process{}
	stops := b.stops
	b.stops = nil
	b.mu.Unlock()
	for _, name := range []string{"connector", "queue-worker", "gateway", "provider"} {
		if p := procs[name]; p != nil {
			_ = p.Stop(10 * time.Second)
			delete(procs, name)
		}
	}
	for i := len(stops) - 1; i >= 0; i-- {
		stops[i]()
	}
	for _, p := range procs {
		_ = p.Stop(10 * time.Second)
	}
}

// start runs bin as the component name and returns once ready says it
// is ready.
func (b *Bed) start(name, bin string, env []string, ready func(*proc.Process) error, args ...string) error {
	// Whole lines, prefixed, so that the components' outputs sharing one
	// log stay readable.
	tee := &proc.LineWriter{Line: func(line string) { _, _ = io.WriteString(b.cfg.Log, name+": "+line+"\n") }}
	p, err := proc.Options{Tee: tee}.Start(name, bin, env, args...)
	if err != nil {
		return err
	}
	if err := ready(p); err != nil {
		_ = p.Stop(5 * time.Second)
		return fmt.Errorf("%s: %w\n%s", name, err, p.Output())
	}
	b.mu.Lock()
	b.procs[name] = p
	b.mu.Unlock()
	return nil
}

// listening is ready once the process accepts connections on addr.
func listening(addr string) func(*proc.Process) error {
	return func(p *proc.Process) error { return proc.WaitListening(addr, startTimeout, p) }
}

// logged is ready once the process printed text.
func logged(text string) func(*proc.Process) error {
	return func(p *proc.Process) error {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		return p.WaitOutput(ctx, text)
	}
}

// serve runs h on addr until Close.
func (b *Bed) serve(addr string, h http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	b.stops = append(b.stops, func() { _ = srv.Close() })
	return nil
}

// startProvider starts the provider with an image for each binary: the
// stack.yml functions' images and the test function's.
func (b *Bed) startProvider() error {
	args := []string{"-port", strconv.Itoa(providerPort), "-state-dir", filepath.Join(b.cfg.Dir, "functions"),
		"-image", TestFnImage + "=" + b.cfg.Bin.TestFn}
	for name, bin := range b.cfg.Bin.Functions {
		args = append(args, "-image", b.cfg.Stack.Functions[name].Image+"="+bin)
	}
	return b.start("provider", b.cfg.Bin.Provider, nil, listening(fmt.Sprintf("127.0.0.1:%d", providerPort)), args...)
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// emptyPrometheus answers every query with an empty vector: the gateway
// adds invocation counts to /system/functions from it, and panics on a
// nil pointer when Prometheus does not answer.
func emptyPrometheus(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, `{"status":"success","data":{"resultType":"vector","result":[]}}`)
}

// SetPassword changes the gateway password in the secrets folder, as a
// rotated secret would; components read it when they start.
func (b *Bed) SetPassword(password string) error {
	return proc.WriteSecrets(b.Secrets, map[string][]byte{"basic-auth-user": []byte(b.User), "basic-auth-password": []byte(password)})
}

// RestartNATS kills the mailbox's NATS server (SIGKILL: nothing is
// flushed on the way out) and starts it again on the same data.
func (b *Bed) RestartNATS() error {
	name, start := "nats-streaming", b.StartNATSStreaming
	if b.cfg.Backend == JetStream {
		name, start = "nats-jetstream", b.StartJetStream
	}
	if err := b.Stop(name, true); err != nil {
		return err
	}
	return start()
}

// ConnectorMetric is the sum of the samples of the connector's metric
// name, read from its /metrics.
func (b *Bed) ConnectorMetric(name string) (float64, error) {
	res, err := http.Get(ConnectorURL + "/metrics")
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	var sum float64
	found := false
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		fields := strings.Fields(line)
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %q: %w", name, line, err)
		}
		sum, found = sum+v, true
	}
	if !found {
		return 0, fmt.Errorf("the connector has no metric %s", name)
	}
	return sum, sc.Err()
}
