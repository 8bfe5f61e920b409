package chaos

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/openfaas/mailbox/test/e2e/bed"
	"github.com/openfaas/mailbox/test/e2e/testfn"
)

// maxRetries is each message's X-Max-Retries: with a third of the calls
// failing, about one message in 81 ((1/3)^4) ends as a dead letter.
const maxRetries = 3

// message is one requeue the load sent, and what became of it.
type message struct {
	id     string
	delay  time.Duration
	sent   time.Time // the requeue was sent
	answer time.Time // its answer arrived
	status int       // its answer's status; 0 for no answer
	// cause and retryAfter are a refusal's: the cause its JSON names,
	// and its Retry-After.
	cause, retryAfter string
	calls             []call // the function's calls for it, in order of arrival
}

// call is one call of the random function, as it reported it.
type call struct {
	at      time.Time
	retries string
	status  int
}

// accepted reports whether the mailbox answered the requeue 202.
func (m *message) accepted() bool { return m.status == http.StatusAccepted }

// delivered is the time of the first 2xx call, and false if none.
func (m *message) delivered() (time.Time, bool) {
	for _, c := range m.calls {
		if c.status/100 == 2 {
			return c.at, true
		}
	}
	return time.Time{}, false
}

// deliveries counts the 2xx calls.
func (m *message) deliveries() int {
	n := 0
	for _, c := range m.calls {
		if c.status/100 == 2 {
			n++
		}
	}
	return n
}

// acceptance is a requeue answered 202: when it was sent and answered.
type acceptance struct{ sent, answer time.Time }

// record keeps every message the load sent and every call the function
// reported; its ServeHTTP is the function's report_url.
type record struct {
	mu       sync.Mutex
	msgs     map[string]*message
	order    []*message // in the order they were sent
	unknown  []testfn.Report
	accepted []acceptance // answers 202, in order
	ok       []time.Time  // 2xx calls, in order of arrival
}

func newRecord() *record { return &record{msgs: map[string]*message{}} }

func (r *record) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	var rep testfn.Report
	if err := json.NewDecoder(io.LimitReader(req.Body, 1<<16)).Decode(&rep); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.msgs[rep.MessageID]
	if m == nil {
		r.unknown = append(r.unknown, rep)
		return
	}
	m.calls = append(m.calls, call{at: rep.At, retries: rep.Retries, status: rep.Status})
	if rep.Status/100 == 2 {
		r.ok = append(r.ok, rep.At)
	}
}

// sent adds a message about to be sent.
func (r *record) sent(m *message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs[m.id] = m
	r.order = append(r.order, m)
}

// answered records the requeue's answer.
func (r *record) answered(m *message, status int, at time.Time, cause, retryAfter string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m.status, m.answer, m.cause, m.retryAfter = status, at, cause, retryAfter
	if status == http.StatusAccepted {
		r.accepted = append(r.accepted, acceptance{m.sent, at})
	}
}

// firstAfter is the earliest time in times at or after t. times is in
// nearly the order it was appended in, a little out of order at most, so
// it is read from its end back to a little before t.
func firstAfter(times []time.Time, t time.Time) (time.Time, bool) {
	var first time.Time
	for i := len(times) - 1; i >= 0 && times[i].After(t.Add(-10*time.Second)); i-- {
		if !times[i].Before(t) && (first.IsZero() || times[i].Before(first)) {
			first = times[i]
		}
	}
	return first, !first.IsZero()
}

// resumed reports when the first requeue sent at or after t was answered
// 202, and the first 2xx call at or after t.
func (r *record) resumed(t time.Time) (accepted, delivered time.Time, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.accepted) - 1; i >= 0 && r.accepted[i].answer.After(t); i-- {
		if a := r.accepted[i]; !a.sent.Before(t) && (accepted.IsZero() || a.answer.Before(accepted)) {
			accepted = a.answer
		}
	}
	d, okD := firstAfter(r.ok, t)
	return accepted, d, !accepted.IsZero() && okD
}

// open is the accepted messages without a 2xx call.
func (r *record) open() []*message {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*message
	for _, m := range r.order {
		if _, ok := m.delivered(); m.accepted() && !ok {
			out = append(out, m)
		}
	}
	return out
}

// target is where the load sends requeues, and where the mailbox keeps
// its dead letters.
type target struct {
	// urls are requeue URLs for the random function, taken in turn.
	urls []string
	// header is put on each requeue, for instance a token.
	header http.Header
	// prefix is the mailbox's channel prefix and JetStream stream.
	prefix string
}

// mailboxTarget is the bed's mailbox function, through the gateway.
var mailboxTarget = target{urls: []string{bed.GatewayURL + "/function/" + bed.Mailbox + "/deadletter/" + bed.Random}, prefix: bed.Prefix}

// load sends requeues for the random function to the mailbox at a steady
// rate, each with a new id and a random delay of 1 to 3 s.
type load struct {
	tgt      target
	rec      *record
	prefix   string
	rate     float64
	client   *http.Client
	inflight atomic.Int64
	skipped  atomic.Int64 // requeues not sent: maxInflight were unanswered
	seq      int
	stop     chan struct{}
	done     chan struct{}
	wg       sync.WaitGroup
}

// maxInflight bounds the requeues awaiting their answer: one due while
// that many are is not sent, and counted.
const maxInflight = 256

func startLoad(rec *record, prefix string, rate float64, tgt target) *load {
	l := &load{tgt: tgt, rec: rec, prefix: prefix, rate: rate, stop: make(chan struct{}), done: make(chan struct{}),
		client: &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: maxInflight}}}
	go l.run()
	return l
}

func (l *load) run() {
	defer close(l.done)
	start := time.Now()
	tick := time.NewTicker(min(time.Duration(float64(time.Second)/l.rate), 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-l.stop:
			l.wg.Wait()
			return
		case <-tick.C:
		}
		// As many as are due by now: a ticker drops the ticks of a
		// receiver that was not scheduled in time, as on a loaded machine.
		for due := int(l.rate * time.Since(start).Seconds()); l.seq < due; {
			l.seq++
			if l.inflight.Load() >= maxInflight {
				l.skipped.Add(1)
				continue
			}
			m := &message{id: fmt.Sprintf("%s-%d", l.prefix, l.seq), delay: time.Duration(1000+rand.IntN(2001)) * time.Millisecond}
			l.inflight.Add(1)
			l.wg.Add(1)
			url := l.tgt.urls[l.seq%len(l.tgt.urls)]
			go func() {
				defer l.wg.Done()
				defer l.inflight.Add(-1)
				l.send(url, m)
			}()
		}
	}
}

// send posts one requeue and records its answer.
func (l *load) send(url string, m *message) {
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(m.id))
	if err != nil {
		return
	}
	for k, v := range l.tgt.header {
		req.Header[k] = v
	}
	req.Header.Set("X-Mailbox-Message-Id", m.id)
	req.Header.Set("X-Delay-Duration", fmt.Sprintf("%dms", m.delay.Milliseconds()))
	req.Header.Set("X-Max-Retries", fmt.Sprint(maxRetries))
	req.Header.Set("X-Backoff", "fixed")
	m.sent = time.Now()
	l.rec.sent(m)
	res, err := l.client.Do(req)
	status := 0
	var cause, retryAfter string
	if err == nil {
		if res.StatusCode/100 != 2 {
			var refusal struct{ Cause string }
			_ = json.NewDecoder(io.LimitReader(res.Body, 1<<16)).Decode(&refusal)
			cause, retryAfter = refusal.Cause, res.Header.Get("Retry-After")
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		status = res.StatusCode
	}
	l.rec.answered(m, status, time.Now(), cause, retryAfter)
}

// Stop stops sending and returns once every requeue sent is answered.
func (l *load) Stop() {
	close(l.stop)
	<-l.done
	l.client.CloseIdleConnections()
}
