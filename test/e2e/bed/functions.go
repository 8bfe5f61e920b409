package bed

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/openfaas/faas-provider/types"

	"github.com/openfaas/mailbox/test/e2e/testfn"
)

// testFnImage is the image name the provider maps to the test function's
// binary.
const testFnImage = "mailbox-bed/testfn:latest"

// Test functions, all the test function's binary (package testfn), each
// named after its behaviour.
const (
	// Flaky answers 429 FlakyFailures times to each message, then 200.
	Flaky         = testfn.Flaky
	FlakyFailures = 2
	// Failing always answers 500. Its annotations set max-retries to
	// FailingMaxRetries and the delay to 1 s.
	Failing           = testfn.Failing
	FailingMaxRetries = 1
	// Slow answers 200 after SlowFor.
	Slow    = testfn.Slow
	SlowFor = 2 * time.Second
	// Signed requeues itself, signed, through the mailbox. It is not
	// deployed with the others: it needs the token secret (see
	// DeployTestFunction).
	Signed = testfn.Signed
	// Random fails a random share of its calls and reports each call to
	// a recorder (package testfn). It is not deployed with the others:
	// its deployer gives it the share and the recorder's URL
	// (DeployTestFunction).
	Random = testfn.Random
)

// Functions deployed from stack.yml.
const (
	Mailbox     = "mailbox"
	RateLimited = "ratelimited"
)

// deployFunctions deploys every function through the gateway, as
// faas-cli deploy would, and waits until each is ready.
func (b *Bed) deployFunctions(ctx context.Context) error {
	specs := []types.FunctionDeployment{
		b.mailboxSpec(nil),
		b.fromStack(RateLimited,
			"api_url=http://"+apiAddress+"/work",
			"mailbox_url="+GatewayURL+"/function/"+Mailbox,
			"requeue_delay=1s",
			"healthcheck_interval=1s",
		),
		testFn(Flaky, fmt.Sprintf("fail_times=%d", FlakyFailures)),
		withAnnotations(testFn(Failing), map[string]string{
			// Read by the connector from the gateway's /system/functions;
			// a message's own X-Max-Retries and X-Delay-Duration win.
			"com.openfaas.mailbox.max-retries": strconv.Itoa(FailingMaxRetries),
			"com.openfaas.mailbox.delay":       "1",
		}),
		testFn(Slow, "sleep="+SlowFor.String()),
	}
	for _, spec := range specs {
		status, err := b.Client.Deploy(ctx, spec)
		if err != nil {
			return fmt.Errorf("deploy %s: %w", spec.Service, err)
		}
		if status != http.StatusAccepted && status != http.StatusOK {
			return fmt.Errorf("deploy %s: gateway answered %d", spec.Service, status)
		}
	}
	for _, spec := range specs {
		if err := b.waitReady(ctx, spec.Service); err != nil {
			return err
		}
	}
	return nil
}

// mailboxSpec is the mailbox function's deployment: stack.yml's, pointed
// at the bed's NATS, with env put over its environment and secrets.
func (b *Bed) mailboxSpec(secrets []string, env ...string) types.FunctionDeployment {
	// gateway_url as the chart gives it: the API refuses at requeue a
	// callback the connector would refuse, and allows the gateway's
	// functions.
	spec := b.fromStack(Mailbox, slices.Concat(b.mailboxEnv(), []string{"healthcheck_interval=1s", "gateway_url=" + GatewayURL}, env)...)
	spec.Secrets = append(spec.Secrets, secrets...)
	return spec
}

// UpdateMailbox deploys the mailbox function again through the gateway, as
// faas-cli deploy does after stack.yml changed: with the bed's settings,
// env put over them, and secrets (created beforehand, as with faas-cli
// secret create). It returns once the new process is ready. Without
// arguments it restores the bed's deployment.
func (b *Bed) UpdateMailbox(ctx context.Context, secrets []string, env ...string) error {
	spec := b.mailboxSpec(secrets, env...)
	status, err := b.Client.Update(ctx, spec)
	if err != nil {
		return fmt.Errorf("update %s: %w", Mailbox, err)
	}
	if status != http.StatusAccepted && status != http.StatusOK {
		return fmt.Errorf("update %s: gateway answered %d", Mailbox, status)
	}
	return b.waitReady(ctx, Mailbox)
}

// DeployTestFunction deploys (or deploys again) the test function with the
// behaviour name through the gateway, with env and secrets (created
// beforehand), and returns once it is ready.
func (b *Bed) DeployTestFunction(ctx context.Context, name string, secrets []string, env ...string) error {
	spec := testFn(name, env...)
	spec.Secrets = secrets
	deploy := b.Client.Deploy
	if _, err := b.Client.GetFunction(ctx, name, ""); err == nil {
		deploy = b.Client.Update
	}
	status, err := deploy(ctx, spec)
	if err != nil {
		return fmt.Errorf("deploy %s: %w", name, err)
	}
	if status != http.StatusAccepted && status != http.StatusOK {
		return fmt.Errorf("deploy %s: gateway answered %d", name, status)
	}
	return b.waitReady(ctx, name)
}

// fromStack is the deployment faas-cli makes of a stack.yml function, with
// env put over its environment.
func (b *Bed) fromStack(name string, env ...string) types.FunctionDeployment {
	fn := b.Stack.Functions[name]
	return types.FunctionDeployment{
		Service:     name,
		Image:       fn.Image,
		EnvVars:     withEnv(fn.Environment, env...),
		Labels:      deref(fn.Labels),
		Annotations: deref(fn.Annotations),
		Secrets:     fn.Secrets,
	}
}

// withAnnotations is spec with annotations.
func withAnnotations(spec types.FunctionDeployment, annotations map[string]string) types.FunctionDeployment {
	spec.Annotations = &annotations
	return spec
}

// testFn is the deployment of the test function with the behaviour name.
func testFn(name string, env ...string) types.FunctionDeployment {
	labels := map[string]string{"com.openfaas.scale.min": "1"}
	return types.FunctionDeployment{Service: name, Image: testFnImage, EnvVars: withEnv(nil, append(env, "behaviour="+name)...), Labels: &labels}
}

// withEnv is a copy of vars with the KEY=VALUE pairs of env set.
func withEnv(vars map[string]string, env ...string) map[string]string {
	out := maps.Clone(vars)
	if out == nil {
		out = map[string]string{}
	}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		out[k] = v
	}
	return out
}

// waitReady polls the gateway until the function has a ready replica.
func (b *Bed) waitReady(ctx context.Context, name string) error {
	deadline := time.Now().Add(startTimeout)
	for {
		st, err := b.Client.GetFunction(ctx, name, "")
		if err == nil && st.AvailableReplicas > 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready through the gateway after %s (last error: %v); its output:\n%s",
				name, startTimeout, err, b.Process(Provider).Output())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func deref(m *map[string]string) *map[string]string {
	if m == nil {
		return nil
	}
	c := maps.Clone(*m)
	return &c
}

// API stands in for the rate-limited API the example function calls: it
// answers 429 with Retry-After 1 to the first Limit calls for each body,
// then 200, and records every call.
type API struct {
	mu    sync.Mutex
	limit int
	calls map[string]int
}

// SetLimit sets how many calls per body are refused with 429.
func (a *API) SetLimit(n int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.limit = n
}

// Calls is how many calls the API had for body.
func (a *API) Calls(body string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls[body]
}

func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	body := string(b)
	a.mu.Lock()
	if a.calls == nil {
		a.calls = map[string]int{}
	}
	a.calls[body]++
	refused := a.calls[body] <= a.limit
	a.mu.Unlock()
	if refused {
		w.Header().Set("Retry-After", "1")
		http.Error(w, "slow down", http.StatusTooManyRequests)
		return
	}
	_, _ = w.Write([]byte("done"))
}

// FunctionLogs is the function's output as the gateway serves it at
// /system/logs (faas-cli logs).
func (b *Bed) FunctionLogs(ctx context.Context, name string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	msgs, err := b.Client.GetLogs(ctx, name, "", false, 0, nil)
	if err != nil {
		return "", err
	}
	var out strings.Builder
	for m := range msgs {
		out.WriteString(m.Text)
		out.WriteByte('\n')
	}
	return out.String(), nil
}
