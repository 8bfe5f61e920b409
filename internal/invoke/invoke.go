// Package invoke calls functions through the OpenFaaS gateway
// (POST <gateway>/function/<name>) using connector-sdk's types.Invoker, and
// reports each call as a delivery.Result for delivery.Decide.
//
// connector-sdk v0.7.1's Invoker is used as it is, with its flaws worked
// around here rather than patched:
//
//   - NewInvoker drops its userAgent argument, so the Invoker is built as a
//     struct literal.
//   - With an empty body, InvokeWithContext sends a "no message to send" error
//     on Responses and then invokes anyway. Empty bodies are legitimate, so
//     each call gets a buffered channel with room for both responses and
//     keeps the last one, the real call.
//   - Responses is shared by all calls on one Invoker, so each call gets its
//     own Invoker (a few words of memory) instead of correlating responses.
//   - It reads the whole response body with io.ReadAll, and it sets
//     User-Agent, X-Connector and X-Topic itself and appends the caller's
//     headers after them, duplicating any the stored request already had.
//     A per-call RoundTripper in front of the client's transport sends
//     exactly the caller's headers (plus User-Agent) and bounds what the SDK
//     can read of the response.
//   - types.MakeClient keeps idle connections for 120ms, so nothing is
//     reused between deliveries; NewClient keeps them for 90s.
//
// The SDK also logs "[connector] Invoke: <function>" with the standard
// logger on every call; that cannot be turned off without changing the
// process-wide logger, which a library must not do.
package invoke

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"strings"
	"time"

	"github.com/openfaas/connector-sdk/types"

	"github.com/openfaas/mailbox/internal/callback"
	"github.com/openfaas/mailbox/internal/delivery"
	"github.com/openfaas/mailbox/requeue"
)

const (
	// readLimit is the most of a response body held in memory. Decide keeps
	// delivery.ResponseLimit bytes; the one extra byte lets it see whether
	// the cut falls inside a character.
	readLimit = delivery.ResponseLimit + 1
	// drainLimit is how much of a longer response is read and discarded so
	// the connection can be reused. Past it, closing the connection is
	// cheaper than reading on.
	drainLimit = 64 << 10
	// maxDialTimeout bounds connecting to the gateway even when the request
	// timeout is long: a gateway that does not accept within this is down.
	maxDialTimeout = 10 * time.Second
)

// Invoker calls functions through one gateway. It is safe for concurrent
// use.
type Invoker struct {
	functionURL string
	client      *http.Client
	callbacks   *http.Client // nil: Post refuses
	userAgent   string
}

// WithCallbackClient makes Post send callbacks with client, which should
// come from callback.Policy.Client: a callback URL is a caller's choice,
// so it must not be dialled by the gateway's client, which reaches any
// address and may use a proxy. Without it Post refuses every callback.
// Call it before the Invoker is used.
func (i *Invoker) WithCallbackClient(client *http.Client) *Invoker {
	i.callbacks = client
	return i
}

// New returns an Invoker that POSTs to <gatewayURL>/function/<function>
// with client, which should come from NewClient. A nil client means Go's
// default transport and no timeout beyond the context's. userAgent replaces
// any User-Agent among the headers passed to Invoke; if it is empty, those
// headers decide.
func New(gatewayURL string, client *http.Client, userAgent string) *Invoker {
	if client == nil {
		client = &http.Client{}
	}
	return &Invoker{
		functionURL: strings.TrimRight(gatewayURL, "/") + "/function",
		client:      client,
		userAgent:   userAgent,
	}
}

// NewClient returns a client for Invoker. timeout bounds each call: dialing,
// waiting for the function and reading its response; zero means no bound,
// leaving it to the context. Idle connections are kept for 90s, up to
// maxConnsPerHost of them, so set it to the number of concurrent calls;
// values below 1 keep Go's default of 2. It does not limit how many calls
// run at once.
func NewClient(timeout time.Duration, maxConnsPerHost int) *http.Client {
	dialTimeout := maxDialTimeout
	if timeout > 0 && timeout < dialTimeout {
		dialTimeout = timeout
	}
	maxIdle := maxConnsPerHost
	if maxIdle < 1 {
		maxIdle = http.DefaultMaxIdleConnsPerHost
	}
	return &http.Client{
		Transport: &http.Transport{
			Proxy: http.ProxyFromEnvironment,
			DialContext: (&net.Dialer{
				Timeout:   dialTimeout,
				KeepAlive: 30 * time.Second,
			}).DialContext,
			MaxIdleConns:          maxIdle,
			MaxIdleConnsPerHost:   maxIdle,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   dialTimeout,
			ExpectContinueTimeout: time.Second,
		},
		Timeout: timeout,
	}
}

// Invoke POSTs body to function with exactly header (plus the Invoker's
// User-Agent) and returns the status, the first keep bytes of the response
// body (at least ResponseLimit+1), its X-Call-Id and, on a 429 or 503, its
// Retry-After. A call that gets no response (network error, timeout,
// cancelled ctx) returns Result.Err. A redirect from the gateway is
// returned as it is, not followed: the stored body must not be posted
// anywhere else.
func (i *Invoker) Invoke(ctx context.Context, function string, body []byte, header http.Header, keep int) delivery.Result {
	if function == "" {
		return delivery.Result{Err: errors.New("invoke: no function name")}
	}
	// PathEscape keeps a stored name with "/" or "?" from reaching another
	// gateway route; valid names ("fn", "fn.namespace") are unchanged.
	name := neturl.PathEscape(function)

	sent := header.Clone()
	if sent == nil {
		sent = http.Header{}
	}
	if i.userAgent != "" {
		sent.Set("User-Agent", i.userAgent)
	}

	client := i.callClient(sent, keep)

	// One response for the call, plus one for the SDK's spurious empty-body
	// error, so InvokeWithContext never blocks and returns only when done.
	responses := make(chan types.InvokerResponse, 2)
	sdk := &types.Invoker{
		Client:     client,
		GatewayURL: i.functionURL,
		Responses:  responses,
		UserAgent:  i.userAgent,
	}
	// The SDK routes by topic; a topic named after the function maps to it.
	topics := types.NewTopicMap()
	topics.Sync(&map[string][]string{name: {name}})

	sdk.InvokeWithContext(ctx, &topics, name, &body, nil)
	close(responses)

	// The spurious error, when sent, comes first; the call's own response is
	// always last.
	var res types.InvokerResponse
	n := 0
	for r := range responses {
		res = r
		n++
	}
	if n == 0 {
		return delivery.Result{Err: errors.New("invoke: connector-sdk returned no response")}
	}
	if res.Error != nil {
		return delivery.Result{Err: res.Error}
	}
	var out delivery.Result
	if res.Body != nil {
		out.Body = *res.Body
	}
	var h http.Header
	if res.Header != nil {
		h = *res.Header
	}
	return result(res.Status, h, out.Body)
}

// Post POSTs body to url with exactly header (plus the Invoker's
// User-Agent), as Invoke does for a function, with the callback client:
// callbacks go this way. An error never repeats url's query, which may
// hold a secret: it is stored with the dead letter and logged.
func (i *Invoker) Post(ctx context.Context, url string, body []byte, header http.Header) delivery.Result {
	if i.callbacks == nil {
		return delivery.Result{Err: fmt.Errorf("invoke: %w: no callback client", callback.ErrRefused)}
	}
	res := i.post(ctx, url, body, header)
	if urlErr, ok := errors.AsType[*neturl.Error](res.Err); ok {
		urlErr.URL = callback.Redact(urlErr.URL)
	}
	return res
}

func (i *Invoker) post(ctx context.Context, url string, body []byte, header http.Header) delivery.Result {
	sent := header.Clone()
	if sent == nil {
		sent = http.Header{}
	}
	if i.userAgent != "" {
		sent.Set("User-Agent", i.userAgent)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		// Its text may hold the URL.
		return delivery.Result{Err: fmt.Errorf("%w: not a URL that can be called", callback.ErrRefused)}
	}
	res, err := i.callClientOf(i.callbacks, sent, 0).Do(req)
	if err != nil {
		return delivery.Result{Err: err}
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return delivery.Result{Err: err}
	}
	return result(res.StatusCode, res.Header, b)
}

// result is the delivery.Result of an answer.
func result(status int, h http.Header, body []byte) delivery.Result {
	out := delivery.Result{Status: status, Body: body, CallID: h.Get("X-Call-Id")}
	if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		out.RetryAfter = requeue.RetryAfter(h.Get("Retry-After"), time.Now())
	}
	return out
}

// callClient is the Invoker's client for one call: it sends exactly
// header, reads at most keep bytes of the answer (at least readLimit) and
// does not follow redirects.
func (i *Invoker) callClient(header http.Header, keep int) *http.Client {
	return i.callClientOf(i.client, header, keep)
}

func (i *Invoker) callClientOf(base *http.Client, header http.Header, keep int) *http.Client {
	client := *base
	transport := client.Transport
	if transport == nil {
		transport = http.DefaultTransport
	}
	client.Transport = &callTransport{base: transport, header: header, limit: int64(max(keep, readLimit))}
	client.CheckRedirect = func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}
	return &client
}

// callTransport sends one call's request with exactly the headers chosen
// by Invoke, and bounds the response body the SDK reads.
type callTransport struct {
	base   http.RoundTripper
	header http.Header
	limit  int64
}

func (t *callTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	out := req.Clone(req.Context())
	out.Header = t.header
	res, err := t.base.RoundTrip(out)
	if err != nil {
		return nil, err
	}
	res.Body = &boundedBody{
		r:    io.LimitReader(res.Body, t.limit),
		body: res.Body,
	}
	return res, nil
}

// boundedBody ends after its limit. Close drains a little more so a
// modestly longer response does not cost the connection.
type boundedBody struct {
	r    io.Reader
	body io.ReadCloser
}

func (b *boundedBody) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b *boundedBody) Close() error {
	_, _ = io.Copy(io.Discard, io.LimitReader(b.body, drainLimit))
	return b.body.Close()
}
