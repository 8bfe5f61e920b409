// Package bed runs the mailbox inside real OpenFaaS: the Community Edition
// gateway and queue-worker, NATS Streaming and NATS JetStream servers as
// processes of their own, a faas-provider provider that runs each function
// as a local process, the mailbox function built through the repository's
// template, the connector, the example function and the test functions.
//
// Everything listens on 127.0.0.1 at fixed ports, which is safe only in a
// network namespace of the bed's own (see Main): the gateway binds :8080
// and :8082 on every interface whatever it is told.
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
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	sdk "github.com/openfaas/go-sdk"
	"github.com/openfaas/go-sdk/stack"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/openfaas/mailbox/internal/config"
	"github.com/openfaas/mailbox/internal/queue"
	"github.com/openfaas/mailbox/internal/queue/jetstream"
	"github.com/openfaas/mailbox/internal/queue/stan"
	"github.com/openfaas/mailbox/test/internal/fnbuild"
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

// Where the mailbox keeps its messages.
const (
	// Prefix is its channel prefix on NATS Streaming.
	Prefix = "mailbox"
	// Stream is its JetStream stream of waiting messages.
	Stream = "mailbox"
	// DeadLetterStream is its JetStream stream of dead letters: the
	// mailbox names it after Stream.
	DeadLetterStream = Stream + "-deadletter"
)

// Components, by the names Start, Stop and Process take.
const (
	NATSStreaming = "nats-streaming"
	NATSJetStream = "nats-jetstream" // with the JetStream backend only
	Provider      = "provider"
	Gateway       = "gateway"
	QueueWorker   = "queue-worker"
	Connector     = "connector"
)

// startOrder is the order components start in, each after those it
// needs; Close stops them in reverse.
var startOrder = []string{NATSStreaming, NATSJetStream, Provider, Gateway, QueueWorker, Connector}

// startTimeout bounds the wait for each component to be ready.
const startTimeout = 60 * time.Second

// stopGrace is how long a component has between SIGTERM and SIGKILL.
const stopGrace = 15 * time.Second

// HTTPClient is the client of the bed and its tests: a component that
// hangs fails a request in 10 s instead of hanging the test.
var HTTPClient = &http.Client{Timeout: 10 * time.Second}

// Config says what the bed runs.
type Config struct {
	// Backend is the mailbox's queue: Stan or JetStream. The gateway and
	// the queue-worker use NATS Streaming either way, as in OpenFaaS CE.
	Backend string
	Bin     Binaries
	// Dir holds the servers' data, the secrets and the functions' files.
	Dir string
	// Log receives every component's output, one line at a time
	// prefixed with its name.
	Log io.Writer
	// MailboxEnv is put over the settings of both the mailbox function
	// and the connector (KEY=VALUE), for instance a shorter
	// upstream_timeout, which both must share on JetStream.
	MailboxEnv []string
	// ClusterNodes, with the JetStream backend, runs the mailbox's
	// JetStream as a cluster of that many nodes (3), each in a network
	// namespace of its own (cluster.go), instead of one server, and the
	// mailbox's streams with as many replicas. 0 runs one server.
	ClusterNodes int
}

// Bed is a running test bed.
type Bed struct {
	cfg Config
	// Stack is the stack file the functions were built from: the mailbox
	// and example functions are deployed with its environment, labels
	// and annotations, pointed at the bed's servers.
	Stack *stack.Services
	// User and Password are the gateway's basic-auth credentials, kept in
	// the secrets folder as OpenFaaS keeps them.
	User, Password string
	secrets        string
	// password is the one in the secrets folder now (SetPassword);
	// connectorToken the name and value of the token secret put beside it
	// for the connector (SetConnectorToken), empty when it has none.
	password       string
	connectorToken [2]string
	// API is the rate-limited API the example function calls.
	API *API
	// Client talks to the gateway with the credentials, as faas-cli does.
	Client *sdk.Client
	// Cluster is the mailbox's JetStream cluster, nil unless
	// Config.ClusterNodes is set.
	Cluster *Cluster

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
	if cfg.ClusterNodes != 0 && cfg.Backend != JetStream {
		return nil, fmt.Errorf("a cluster of %d nodes needs the %s backend", cfg.ClusterNodes, JetStream)
	}
	s, err := fnbuild.LoadStack(cfg.Bin.Stack)
	if err != nil {
		return nil, err
	}
	b := &Bed{cfg: cfg, Stack: s.Services, User: "admin", procs: map[string]*proc.Process{}}
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
	b.secrets = filepath.Join(b.cfg.Dir, "secrets")
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
	gw, _ := url.Parse(GatewayURL)
	b.Client = sdk.NewClient(gw, &sdk.BasicAuth{Username: b.User, Password: b.Password}, HTTPClient)
	if b.cfg.ClusterNodes > 0 {
		c, err := startCluster(b.cfg.ClusterNodes, b.cfg.Bin.NATSServer, b.cfg.Dir, b.cfg.Log)
		b.Cluster = c
		b.stops = append(b.stops, c.Close)
		if err != nil {
			return err
		}
	}
	for _, name := range startOrder {
		if name == Connector {
			// It delivers to functions: they are deployed first.
			if err := b.deployFunctions(ctx); err != nil {
				return err
			}
		}
		if _, ok := b.component(name); ok {
			if err := b.Start(name); err != nil {
				return err
			}
		}
	}
	return nil
}

// Backend is the mailbox's queue backend.
func (b *Bed) Backend() string { return b.cfg.Backend }

// component is how the bed runs a component.
type component struct {
	bin   string
	env   []string
	args  []string
	ready func(*proc.Process) error
	// recover, when the start failed printing recoverOn, are the
	// arguments of one more start, as its operator would run it.
	recover   []string
	recoverOn string
}

// component returns how the bed runs the component name, and false if
// this bed has no such component.
func (b *Bed) component(name string) (component, bool) {
	switch name {
	case NATSStreaming:
		// Cluster faas-cluster, as OpenFaaS expects, on a file store so
		// that a restart keeps the mailbox's messages (OpenFaaS CE runs
		// it with --store memory, which keeps nothing).
		return component{
			bin: b.cfg.Bin.StreamingServer,
			args: []string{"-cid", "faas-cluster", "-a", "127.0.0.1", "-p", "4222",
				"-st", "file", "--dir", filepath.Join(b.cfg.Dir, NATSStreaming)},
			ready: logged("Streaming Server is ready"),
			// A SIGKILL or a full disk can leave a record cut short at
			// the end of a file, and the server then refuses to start
			// ("Unexpected EOF"). The record was never synced, so never
			// acknowledged: nothing answered 202 is in it (a cut
			// subscription record at worst sends a message again). The
			// server's own remedy is one start with
			// --file_truncate_bad_eof, which refuses to run twice in a
			// row; the start after it is normal again.
			recover: []string{"-cid", "faas-cluster", "-a", "127.0.0.1", "-p", "4222",
				"-st", "file", "--dir", filepath.Join(b.cfg.Dir, NATSStreaming), "--file_truncate_bad_eof"},
			recoverOn: "ContinueOnUnexpectedEOF",
		}, true
	case NATSJetStream:
		if b.cfg.Backend != JetStream || b.cfg.ClusterNodes > 0 {
			return component{}, false
		}
		return component{
			bin:   b.cfg.Bin.NATSServer,
			args:  []string{"-js", "-sd", filepath.Join(b.cfg.Dir, NATSJetStream), "-a", "127.0.0.1", "-p", "4223"},
			ready: logged("Server is ready"),
		}, true
	case Provider:
		// An image for each binary: the stack file's functions' and the
		// test function's.
		args := []string{"-port", strconv.Itoa(providerPort), "-state-dir", filepath.Join(b.cfg.Dir, "functions"),
			"-image", testFnImage + "=" + b.cfg.Bin.TestFn}
		for name, bin := range b.cfg.Bin.Functions {
			args = append(args, "-image", b.Stack.Functions[name].Image+"="+bin)
		}
		return component{bin: b.cfg.Bin.Provider, args: args, ready: listening(fmt.Sprintf("127.0.0.1:%d", providerPort))}, true
	case Gateway:
		// Basic auth, NATS Streaming for asynchronous invocations and the
		// bed's provider. NATS Streaming must be up: the gateway exits
		// when it cannot reach it at start.
		return component{
			bin: b.cfg.Bin.Gateway,
			env: []string{
				"functions_provider_url=http://127.0.0.1:" + strconv.Itoa(providerPort) + "/",
				"faas_nats_address=127.0.0.1",
				"faas_nats_port=4222",
				"faas_nats_cluster_name=faas-cluster",
				"faas_prometheus_host=127.0.0.1",
				"faas_prometheus_port=9090",
				"basic_auth=true",
				"secret_mount_path=" + b.secrets,
				"read_timeout=65s",
				"write_timeout=65s",
				"upstream_timeout=60s",
				"scale_from_zero=false",
			},
			ready: listening("127.0.0.1:8080"),
		}, true
	case QueueWorker:
		// It calls functions through the gateway's /function/ route,
		// which needs no credentials, one message at a time, and never
		// retries: a failed asynchronous call is the function's to hand
		// to the mailbox.
		return component{
			bin: b.cfg.Bin.QueueWorker,
			env: []string{
				"faas_nats_address=127.0.0.1",
				"faas_nats_port=4222",
				"faas_nats_cluster_name=faas-cluster",
				"faas_gateway_address=127.0.0.1",
				"faas_gateway_port=8080",
				"ack_wait=60s",
			},
			ready: logged("Listening on [faas-request]"),
		}, true
	case Connector:
		// It reads the gateway's credentials, and the token when it has
		// one, from the secrets folder when it starts. At debug level it
		// logs each delivery.
		env := b.mailboxEnv()
		b.mu.Lock()
		if name := b.connectorToken[0]; name != "" {
			env = append(env, "auth_token_secret="+name)
		}
		b.mu.Unlock()
		env = append(env,
			"gateway_url="+GatewayURL,
			"basic_auth=true",
			"secret_mount_path="+b.secrets,
			"listen=127.0.0.1:8091",
			"upstream_timeout=30s",
			"log_format=json",
			"log_level=debug",
		)
		return component{
			bin:   b.cfg.Bin.Connector,
			env:   proc.Environ(withEnv(envMap(env), b.cfg.MailboxEnv...)),
			ready: listening("127.0.0.1:8091"),
		}, true
	case ServeA, ServeB:
		return b.serveComponent(name)
	}
	return component{}, false
}

// mailboxEnv is the queue settings the mailbox function and the
// connector share, with Config.MailboxEnv put over them.
func (b *Bed) mailboxEnv() []string {
	env := map[string]string{
		"backend":          b.cfg.Backend,
		"nats_url":         b.MailboxNATSURL(),
		"nats_cluster_id":  "faas-cluster",
		"channel_prefix":   Prefix,
		"jetstream_stream": Stream,
	}
	if b.cfg.ClusterNodes > 0 {
		env["jetstream_replicas"] = strconv.Itoa(b.cfg.ClusterNodes)
	}
	return proc.Environ(withEnv(env, b.cfg.MailboxEnv...))
}

// MailboxNATSURL is the URL (a list of them for a cluster) of the
// mailbox's NATS.
func (b *Bed) MailboxNATSURL() string {
	switch {
	case b.Cluster != nil:
		return b.Cluster.URL()
	case b.cfg.Backend == JetStream:
		return JetStreamURL
	}
	return NATSStreamingURL
}

// OpenQueue opens the mailbox's queue on the bed's NATS, with the settings
// the mailbox function and the connector share: what a client with access
// to NATS, not to the mailbox's API, can write. Close it when done.
func (b *Bed) OpenQueue() (queue.Queue, error) {
	cfg, err := config.Load(config.Environ(b.mailboxEnv()), nil)
	if err != nil {
		return nil, err
	}
	// As internal/service opens it, which this module cannot import (it
	// needs connector-sdk).
	common := queue.Options{
		URL:             cfg.NATSURL,
		Prefix:          cfg.ChannelPrefix,
		MaxInflight:     cfg.MaxInflight,
		StatusRetention: cfg.StatusRetention,
		Logger:          slog.New(slog.DiscardHandler),
		Registerer:      prometheus.NewRegistry(),
	}
	if cfg.Backend == Stan {
		return stan.Open(stan.Options{Options: common, ClusterID: cfg.NATSClusterID, ClientID: cfg.NATSClientID})
	}
	return jetstream.Open(jetstream.Options{Options: common, Stream: cfg.JetStreamStream, Consumer: cfg.JetStreamConsumer,
		Replicas: cfg.JetStreamReplicas, DeadLetterMaxAge: cfg.DeadLetterMaxAge})
}

// Start starts the named component unless it is running, and returns
// once it is ready.
func (b *Bed) Start(name string) error {
	c, ok := b.component(name)
	if !ok {
		return fmt.Errorf("this bed has no component %q", name)
	}
	if p := b.Process(name); p != nil && !p.Exited() {
		return nil
	}
	// Whole lines, prefixed, so that the components' outputs sharing one
	// log stay readable.
	tee := &proc.LineWriter{Line: func(line string) { _, _ = io.WriteString(b.cfg.Log, name+": "+line+"\n") }}
	p, err := proc.Options{Tee: tee}.Start(name, c.bin, c.env, c.args...)
	if err != nil {
		return err
	}
	if err := c.ready(p); err != nil {
		_ = p.Stop(5 * time.Second)
		if c.recover == nil || !strings.Contains(p.Output(), c.recoverOn) {
			return fmt.Errorf("%s: %w\n%s", name, err, p.Output())
		}
		_, _ = io.WriteString(b.cfg.Log, name+": bed: starting again with "+c.recover[len(c.recover)-1]+"\n")
		if p, err = (proc.Options{Tee: tee}).Start(name, c.bin, c.env, c.recover...); err != nil {
			return err
		}
		if err := c.ready(p); err != nil {
			_ = p.Stop(5 * time.Second)
			return fmt.Errorf("%s, started with %s: %w\n%s", name, c.recover[len(c.recover)-1], err, p.Output())
		}
	}
	b.mu.Lock()
	b.procs[name] = p
	b.mu.Unlock()
	return nil
}

// Stop stops the named component with SIGTERM, or SIGKILL when kill.
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
	return p.Stop(stopGrace)
}

// NATS is the component that is the mailbox's NATS server.
func (b *Bed) NATS() string {
	if b.cfg.Backend == JetStream {
		return NATSJetStream
	}
	return NATSStreaming
}

// Process is the named component's process, or nil when it is not
// running.
func (b *Bed) Process(name string) *proc.Process {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.procs[name]
}

// Close stops everything, each component before those it needs, and then
// the bed's own servers.
func (b *Bed) Close() {
	b.mu.Lock()
	procs := b.procs
	b.procs = map[string]*proc.Process{}
	stops := b.stops
	b.stops = nil
	b.mu.Unlock()
	for name, p := range procs {
		if !slices.Contains(startOrder, name) {
			_ = p.Stop(stopGrace) // mailbox serve replicas: they need the rest
		}
	}
	for _, name := range slices.Backward(startOrder) {
		if p := procs[name]; p != nil {
			_ = p.Stop(stopGrace)
		}
	}
	for _, stop := range slices.Backward(stops) {
		stop()
	}
}

// envMap is env (KEY=VALUE pairs) as a map.
func envMap(env []string) map[string]string {
	m := make(map[string]string, len(env))
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
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

// SetPassword writes the gateway's credentials with password to the
// secrets folder, as a rotated secret would; components read it when
// they start.
func (b *Bed) SetPassword(password string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.password = password
	return b.writeSecrets()
}

// SetConnectorToken puts the mailbox's token in the secrets folder as the
// secret name, and has the connector read it (auth_token_secret) from its
// next start, so that it signs every call it makes. An empty name takes
// the token away again.
func (b *Bed) SetConnectorToken(name, token string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.connectorToken = [2]string{name, token}
	return b.writeSecrets()
}

// writeSecrets writes the secrets folder anew, with b.mu held.
func (b *Bed) writeSecrets() error {
	secrets := map[string][]byte{"basic-auth-user": []byte(b.User), "basic-auth-password": []byte(b.password)}
	if name := b.connectorToken[0]; name != "" {
		secrets[name] = []byte(b.connectorToken[1])
	}
	return proc.WriteSecrets(b.secrets, secrets)
}

// ConnectorMetric is the sum of the samples of the connector's metric
// name, read from its /metrics.
func (b *Bed) ConnectorMetric(name string) (float64, error) {
	res, err := HTTPClient.Get(ConnectorURL + "/metrics")
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
