package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// The end-to-end mode measures the mailbox from outside, as a user runs
// it: a `mailbox serve` process (API, connector and embedded NATS in one
// process, the binary of cmd/mailbox) on free ports with its data_dir in
// the temporary directory, requeues sent to it over HTTP by keep-alive
// clients, deliveries received over HTTP by a stand-in gateway whose sink
// answers 200 at once. Nothing of the mailbox runs in this process.

// e2eTokenSecret is the name of the token's file under secret_mount_path.
const e2eTokenSecret = "mailbox-token"

// e2eResult is what one `mailbox serve` process measured.
type e2eResult struct {
	Backend  string
	Statuses bool
	Inflight int

	Burst e2eBurst
	Paced lateness

	// PeakRSSKiB is the process's peak resident memory (the most of VmHWM
	// and VmRSS, sampled every rssEvery) until the burst is delivered;
	// PeakRSSEndKiB until the paced run is too.
	PeakRSSKiB    int
	PeakRSSEndKiB int
	Threads       int

	// Other is the share of the CPU other processes used meanwhile (the
	// mailbox process is this one's child and not counted).
	Other float64
	// StatusesDropped is mailbox_status_dropped_total once the burst is
	// delivered: statuses not stored because the recorder's buffer was
	// full or the write failed.
	StatusesDropped float64

	// Stop is how the process ended on SIGTERM: nil for a clean exit.
	Stop error

	Errs []error
}

// e2eBurst is a burst of requeues sent as fast as the clients can.
type e2eBurst struct {
	Messages int
	// Ingest is from the first requeue sent to the last 202 received.
	Ingest time.Duration
	// Delivered is from the first requeue sent to the last first arrival
	// at the sink: the end-to-end time, delay included.
	Delivered time.Duration
	Delay     time.Duration
	// Late is arrival minus the due time the API answered, ascending.
	Late  []time.Duration
	Calls int // at the sink, duplicates included
}

func (b e2eBurst) ingestRate() float64 {
	if b.Ingest <= 0 {
		return 0
	}
	return float64(b.Messages) / b.Ingest.Seconds()
}

func (b e2eBurst) deliveryRate() float64 {
	if b.Delivered <= 0 {
		return 0
	}
	return float64(b.Messages) / b.Delivered.Seconds()
}

func (b e2eBurst) quantile(q float64) time.Duration {
	return lateness{Sorted: b.Late}.quantile(q)
}

// statusesLabel names a statuses setting in tables and logs.
func statusesLabel(on bool) string {
	if on {
		return "statuses on"
	}
	return "statuses off"
}

// runE2E measures every backend, with statuses on, off or both, each
// combination on a fresh `mailbox serve` process and store.
func runE2E(ctx context.Context, o options, log *slog.Logger) ([]*e2eResult, error) {
	if _, err := os.Stat(o.Mailbox); err != nil {
		return nil, fmt.Errorf("-mailbox: %w", err)
	}
	var results []*e2eResult
	for _, backend := range o.Backends {
		for _, on := range o.Statuses {
			l := log.With("backend", backend, "statuses", on)
			runtime.GC() // what the last combination left is not collected during the next
			start, startErr := readCPU()
			began := time.Now()
			r := measureE2E(ctx, o, backend, on, l)
			if end, err := readCPU(); err == nil && startErr == nil {
				r.Other = otherShare(start, end, time.Since(began).Seconds())
			}
			l.Info("end to end done", "other_processes_cpu_percent", fmt.Sprintf("%.1f", 100*r.Other))
			results = append(results, r)
			if ctx.Err() != nil {
				return results, ctx.Err()
			}
		}
	}
	return results, nil
}

// measureE2E starts the sink and one `mailbox serve`, sends the burst,
// waits for every message, then runs the paced load, and stops the
// process with SIGTERM.
func measureE2E(ctx context.Context, o options, backend string, statuses bool, log *slog.Logger) *e2eResult {
	r := &e2eResult{Backend: backend, Statuses: statuses, Inflight: o.Inflight}
	fail := func(what string, err error) *e2eResult {
		log.Error("end to end failed", "what", what, "error", err)
		r.Errs = append(r.Errs, fmt.Errorf("e2e %s, %s: %s: %w", backend, statusesLabel(statuses), what, err))
		return r
	}
	sk, err := startSink(false)
	if err != nil {
		return fail("sink", err)
	}
	defer sk.stop()

	m, err := startMailbox(ctx, o, backend, statuses, sk.url(), filepath.Join(o.Dir, "e2e-"+backend+"-"+strconv.FormatBool(statuses)))
	if err != nil {
		return fail("mailbox serve", err)
	}
	stopped := false
	defer func() {
		if !stopped {
			r.Stop = m.proc.stop()
		}
	}()

	client := newClient(o.Clients)
	defer client.CloseIdleConnections()
	send := m.requeuer(client, make([]byte, o.E2EBody), o.E2EDelay)

	// The burst.
	log.Info("measuring", "what", "burst", "requeues", o.Burst, "clients", o.Clients)
	ids, dues := make([]string, o.Burst), make([]time.Time, o.Burst)
	start := time.Now()
	err = forEach(ctx, o.Burst, o.Clients, func(ctx context.Context, i int) (err error) {
		ids[i], dues[i], err = send(ctx)
		return err
	})
	if err != nil {
		return fail("burst", fmt.Errorf("%w; its log: %s", err, m.proc.log()))
	}
	r.Burst = e2eBurst{Messages: o.Burst, Ingest: time.Since(start), Delay: o.E2EDelay}
	if err := m.waitDelivered(ctx, sk, o.Burst, o.E2EDelay); err != nil {
		return fail("burst delivery", err)
	}
	r.Burst.Late, r.Burst.Delivered, err = lateOf(sk, ids, dues, start)
	if err != nil {
		return fail("burst delivery", err)
	}
	r.Burst.Calls, _, _ = sk.snapshot()
	if err := m.checkStatuses(ctx, ids, statuses); err != nil {
		return fail("statuses setting", err)
	}
	if r.StatusesDropped, err = m.counter(ctx, "mailbox_status_dropped_total"); err != nil {
		return fail("metrics", err)
	}
	if r.PeakRSSKiB, r.Threads, err = m.rss(); err != nil {
		return fail("peak RSS", err)
	}
	log.Info("measured", "what", "burst", "ingest_per_second", round(r.Burst.ingestRate()), "delivery_per_second", round(r.Burst.deliveryRate()),
		"p50", r.Burst.quantile(0.5), "p99", r.Burst.quantile(0.99), "peak_rss_kib", r.PeakRSSKiB)

	// The paced load: requeues sent at o.PacedRate a second, each at its
	// planned time, by the same clients.
	n := int(float64(o.PacedRate) * o.PacedFor.Seconds())
	log.Info("measuring", "what", "paced", "requeues", n, "per_second", o.PacedRate)
	ids, dues = make([]string, n), make([]time.Time, n)
	first := time.Now().Add(100 * time.Millisecond)
	var behind atomic.Int64
	err = forEach(ctx, n, o.Clients, func(ctx context.Context, i int) (err error) {
		at := first.Add(time.Duration(i) * time.Second / time.Duration(o.PacedRate))
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		} else {
			raise(&behind, int64(-d))
		}
		ids[i], dues[i], err = send(ctx)
		return err
	})
	if err != nil {
		return fail("paced", fmt.Errorf("%w; its log: %s", err, m.proc.log()))
	}
	if err := m.waitDelivered(ctx, sk, o.Burst+n, o.E2EDelay); err != nil {
		return fail("paced delivery", err)
	}
	late, _, err := lateOf(sk, ids, dues, first)
	if err != nil {
		return fail("paced delivery", err)
	}
	calls, _, _ := sk.snapshot()
	r.Paced = lateness{Messages: n, Rate: o.PacedRate, Sorted: late, StoreBehind: time.Duration(behind.Load()), Calls: calls - r.Burst.Calls}
	if r.PeakRSSEndKiB, _, err = m.rss(); err != nil {
		return fail("peak RSS", err)
	}
	log.Info("measured", "what", "paced", "p50", r.Paced.quantile(0.5), "p99", r.Paced.quantile(0.99), "max", r.Paced.quantile(1))

	r.Stop, stopped = m.proc.stop(), true
	if r.Stop != nil {
		return fail("stop", fmt.Errorf("%w; its log: %s", r.Stop, m.proc.log()))
	}
	return r
}

// mailbox is a running `mailbox serve`.
type mailbox struct {
	proc  *process
	url   string // http://127.0.0.1:<port>
	token string

	// peakKiB is the most of VmHWM and VmRSS read so far. VmHWM alone is
	// not a peak: Linux updates the high-water mark only at some events,
	// and between them reports the larger of it and the current RSS, so
	// after the Go runtime returns memory a later reading can be lower
	// than an earlier one (seen here). The process is sampled every
	// rssEvery as well.
	peakKiB atomic.Int64
	threads atomic.Int64
}

// rssEvery is how often the mailbox's memory is sampled.
const rssEvery = 50 * time.Millisecond

// startMailbox runs `mailbox serve` configured as a user would through
// its environment: the backend's embedded server storing in dir, the API
// on a free port of 127.0.0.1, deliveries to gatewayURL, a token (so the
// dead-letter management API is on and requeues need the token, the
// defaults with a token), and the quotas raised so that the burst fits.
func startMailbox(ctx context.Context, o options, backend string, statuses bool, gatewayURL, dir string) (*mailbox, error) {
	secrets := filepath.Join(dir, "secrets")
	if err := os.MkdirAll(secrets, 0o700); err != nil {
		return nil, err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, err
	}
	token := hex.EncodeToString(raw)
	if err := os.WriteFile(filepath.Join(secrets, e2eTokenSecret), []byte(token+"\n"), 0o600); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	env := map[string]string{
		"backend":           backend,
		"data_dir":          filepath.Join(dir, "data"),
		"listen":            "127.0.0.1:" + port,
		"gateway_url":       gatewayURL,
		"max_inflight":      strconv.Itoa(o.Inflight),
		"secret_mount_path": secrets,
		"auth_token_secret": e2eTokenSecret,
		"statuses":          strconv.FormatBool(statuses),
		"log_level":         "warn",
		"log_format":        "text",
	}
	if statuses {
		// The default max_waiting_per_function (10,000) would refuse part
		// of a larger burst with 429.
		waiting := strconv.Itoa(max(100_000, 2*(o.Burst+int(float64(o.PacedRate)*o.PacedFor.Seconds()))))
		env["max_waiting"], env["max_waiting_per_function"] = waiting, waiting
	}
	p, err := startProcess(ctx, o.Mailbox, []string{"serve"}, env)
	if err != nil {
		return nil, err
	}
	m := &mailbox{proc: p, url: "http://127.0.0.1:" + port, token: token}
	go func() {
		for {
			_, _, _ = m.rss()
			select {
			case <-p.done:
				return
			case <-time.After(rssEvery):
			}
		}
	}()
	if err := waitFor(ctx, time.Minute, "mailbox serve healthy", func() bool {
		return p.exited() || healthy(m.url+"/healthz")
	}); err != nil || p.exited() {
		_ = p.stop()
		return nil, fmt.Errorf("not healthy (%v); its log: %s", err, p.log())
	}
	return m, nil
}

// requeuer returns a requeue of body for the sink, due delay later: it
// returns the id and due time the API answered.
func (m *mailbox) requeuer(client *http.Client, body []byte, delay time.Duration) func(ctx context.Context) (string, time.Time, error) {
	url := m.url + "/deadletter/" + function
	header := http.Header{
		"Content-Type":     {"application/octet-stream"},
		"Authorization":    {"Bearer " + m.token},
		"X-Delay-Duration": {delay.String()},
	}
	return func(ctx context.Context) (string, time.Time, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return "", time.Time{}, err
		}
		for k, v := range header {
			req.Header[k] = v
		}
		res, err := client.Do(req)
		if err != nil {
			return "", time.Time{}, err
		}
		data, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			return "", time.Time{}, err
		}
		if res.StatusCode != http.StatusAccepted {
			return "", time.Time{}, fmt.Errorf("answer %d, want 202: %s", res.StatusCode, bytes.TrimSpace(data))
		}
		var a struct {
			ID    string    `json:"id"`
			DueAt time.Time `json:"due_at"`
		}
		if err := json.Unmarshal(data, &a); err != nil || a.ID == "" || a.DueAt.IsZero() {
			return "", time.Time{}, fmt.Errorf("answer without id and due_at (%v): %s", err, data)
		}
		return a.ID, a.DueAt, nil
	}
}

// checkStatuses makes sure the statuses setting took effect, so that an
// on/off comparison compares what it says: with statuses on, GET
// /messages/<id> answers 200 for one of ten of ids spread over the burst
// (statuses are stored in the background, and dropped when the
// recorder's buffer is full, so not every message has one); off, it
// answers 404 saying statuses are off.
func (m *mailbox) checkStatuses(ctx context.Context, ids []string, on bool) error {
	var code int
	var body []byte
	n := 0
	get := func() bool {
		id := ids[n%10*len(ids)/10]
		n++
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.url+"/messages/"+id, nil)
		if err != nil {
			return false
		}
		req.Header.Set("Authorization", "Bearer "+m.token)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		defer res.Body.Close()
		body, _ = io.ReadAll(res.Body)
		code = res.StatusCode
		return code == http.StatusOK || code == http.StatusNotFound && bytes.Contains(body, []byte("statuses=false"))
	}
	if err := waitFor(ctx, 30*time.Second, "GET /messages/<id> answered", get); err != nil {
		return fmt.Errorf("%w: last answer %d %s", err, code, bytes.TrimSpace(body))
	}
	if on != (code == http.StatusOK) {
		return fmt.Errorf("GET /messages/<id> with statuses=%v answered %d %s", on, code, bytes.TrimSpace(body))
	}
	return nil
}

// counter reads the sum of a counter's series from the process's
// /metrics (served open: metrics_auth is false).
func (m *mailbox) counter(ctx context.Context, name string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.url+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET /metrics: %d, %v", res.StatusCode, err)
	}
	var sum float64
	for line := range strings.Lines(string(data)) {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return 0, fmt.Errorf("GET /metrics: %q: %w", line, err)
		}
		sum += v
	}
	return sum, nil
}

// waitDelivered waits for the sink to have received want distinct
// messages, with a generous bound that does not depend on the machine's
// speed being any particular figure.
func (m *mailbox) waitDelivered(ctx context.Context, sk *sink, want int, delay time.Duration) error {
	err := waitFor(ctx, delay+max(time.Minute, time.Duration(want)*5*time.Millisecond), "every message delivered", func() bool {
		return m.proc.exited() || sk.delivered() >= want
	})
	if err == nil && m.proc.exited() {
		err = errors.New("mailbox serve exited")
	}
	if err != nil {
		return fmt.Errorf("%w (%d of %d); its log: %s", err, sk.delivered(), want, m.proc.log())
	}
	return nil
}

// rss reads the process's memory and returns the peak seen so far, and
// its threads now.
func (m *mailbox) rss() (peakKiB, threads int, err error) {
	st, err := procStatus(m.proc.cmd.Process.Pid)
	if err != nil {
		return int(m.peakKiB.Load()), int(m.threads.Load()), err
	}
	raise(&m.peakKiB, int64(max(st["VmHWM"], st["VmRSS"])))
	m.threads.Store(int64(st["Threads"]))
	return int(m.peakKiB.Load()), st["Threads"], nil
}

// lateOf returns, for the messages ids due at dues, each first arrival
// at the sink minus its due time, ascending, and how long after start
// the last of them arrived. Every id must have arrived.
func lateOf(sk *sink, ids []string, dues []time.Time, start time.Time) ([]time.Duration, time.Duration, error) {
	late := make([]time.Duration, 0, len(ids))
	var last time.Time
	seen := make(map[string]bool, len(ids))
	for i, id := range ids {
		if seen[id] {
			return nil, 0, fmt.Errorf("the API answered id %s twice", id)
		}
		seen[id] = true
		at, ok := sk.arrival(id)
		if !ok {
			return nil, 0, fmt.Errorf("message %s never arrived", id)
		}
		late = append(late, at.Sub(dues[i]))
		if at.After(last) {
			last = at
		}
	}
	slices.Sort(late)
	return late, last.Sub(start), nil
}
