// Package packaging checks the OpenFaaS packaging of the repository the
// way OpenFaaS itself reads it: stack.yml parsed with go-sdk's stack
// package, the mailbox-go template's template.yml and Dockerfile parsed
// strictly, and every function's build context created with go-sdk's
// builder.CreateBuildContext, built with the Dockerfile's own build-stage
// commands outside the repository, and run.
package packaging

import (
	"bytes"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openfaas/mailbox/internal/config"
	"github.com/openfaas/mailbox/test/internal/fnbuild"
)

// packageDir is where go test started the tests: test/packaging. It is
// read before any test changes directory.
var packageDir, packageDirErr = os.Getwd()

// repoRoot is the repository's root.
func repoRoot(t testing.TB) string {
	t.Helper()
	if packageDirErr != nil {
		t.Fatal(packageDirErr)
	}
	root := filepath.Dir(filepath.Dir(packageDir))
	b, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !bytes.HasPrefix(b, []byte("module github.com/openfaas/mailbox\n")) {
		t.Fatalf("%s is not the mailbox repository's root (go.mod: %v)", root, err)
	}
	return root
}

// loadStack parses stack.yml as faas-cli does (environment substituted),
// after checking that it decodes strictly into go-sdk's schema, so that a
// misspelt key fails here instead of being ignored by faas-cli.
func loadStack(t testing.TB) *fnbuild.Stack {
	t.Helper()
	s, err := fnbuild.LoadStack(filepath.Join(repoRoot(t), "stack.yml"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// The functions stack.yml must define.
var wantFunctions = []string{"mailbox", "ratelimited"}

func TestStackFile(t *testing.T) {
	t.Setenv("REGISTRY", "")
	t.Setenv("TAG", "")
	s := loadStack(t)
	root := repoRoot(t)

	if s.Version != "1.0" || s.Provider.Name != "openfaas" || s.Provider.GatewayURL != "http://127.0.0.1:8080" {
		t.Errorf("version %q, provider %+v; want 1.0, openfaas with the default gateway", s.Version, s.Provider)
	}
	if len(s.StackConfiguration.TemplateConfigs) != 0 {
		t.Errorf("configuration.templates = %+v: the template is local, and a listed one may be fetched over it", s.StackConfiguration.TemplateConfigs)
	}
	copies := s.StackConfiguration.CopyExtraPaths
	for _, want := range []string{"./go.mod", "./go.sum", "./internal", "./requeue"} {
		if !slices.Contains(copies, want) {
			t.Errorf("configuration.copy %q lacks %s, which the handlers' builds need", copies, want)
		}
	}
	for _, p := range copies {
		abs := filepath.Join(root, p)
		if filepath.IsAbs(p) || !strings.HasPrefix(abs, root+string(filepath.Separator)) {
			t.Errorf("configuration.copy %q is outside the repository", p)
		}
		if _, err := os.Stat(abs); err != nil {
			t.Errorf("configuration.copy %q: %v", p, err)
		}
	}

	if len(s.Functions) != len(wantFunctions) {
		t.Errorf("functions %v, want exactly %v", slices.Sorted(maps.Keys(s.Functions)), wantFunctions)
	}
	for _, name := range wantFunctions {
		fn, ok := s.Functions[name]
		if !ok {
			t.Errorf("function %s is missing", name)
			continue
		}
		if fn.Language != "mailbox-go" {
			t.Errorf("%s: lang %q, want mailbox-go", name, fn.Language)
		}
		if _, err := os.Stat(filepath.Join(root, "template", fn.Language, "template.yml")); err != nil {
			t.Errorf("%s: lang %s has no template: %v", name, fn.Language, err)
		}
		if _, err := os.Stat(filepath.Join(root, fn.Handler, "handler.go")); err != nil {
			t.Errorf("%s: handler %s has no handler.go: %v", name, fn.Handler, err)
		}
		if want := "ttl.sh/openfaas-mailbox/" + name + ":latest"; fn.Image != want {
			t.Errorf("%s: image %q with REGISTRY and TAG unset, want %q", name, fn.Image, want)
		}
		if len(fn.BuildOptions) != 0 || fn.FProcess != "" || fn.SkipBuild {
			t.Errorf("%s: build_options %q, fprocess %q, skip_build %v: the template decides these", name, fn.BuildOptions, fn.FProcess, fn.SkipBuild)
		}
		checkWatchdogTimeouts(t, name, fn.Environment)
		checkScaling(t, name, fn.Labels)
	}

	if t.Failed() {
		return
	}
	mb := s.Functions["mailbox"].Environment
	for k, v := range map[string]string{
		"backend": "stan", "nats_url": "nats://nats.openfaas:4222", "nats_cluster_id": "faas-cluster",
	} {
		if mb[k] != v {
			t.Errorf("mailbox: environment %s = %q, want %q (OpenFaaS CE's NATS Streaming)", k, mb[k], v)
		}
	}
	if len(s.Functions["mailbox"].Secrets) != 0 {
		t.Errorf("mailbox: secrets %q: the function needs none on OpenFaaS CE", s.Functions["mailbox"].Secrets)
	}
	rl := s.Functions["ratelimited"].Environment
	if rl["mailbox_url"] != "http://gateway.openfaas:8080/function/mailbox" || rl["function_name"] != "ratelimited" {
		t.Errorf("ratelimited: mailbox_url %q, function_name %q; want the gateway's mailbox and its own name", rl["mailbox_url"], rl["function_name"])
	}

	// The registry placeholder is substituted as faas-cli does.
	t.Setenv("REGISTRY", "registry.example.com/team")
	t.Setenv("TAG", "0.1.0")
	if got := loadStack(t).Functions["mailbox"].Image; got != "registry.example.com/team/mailbox:0.1.0" {
		t.Errorf("image with REGISTRY and TAG set = %q", got)
	}
}

// checkWatchdogTimeouts checks of-watchdog's timeouts: set, parseable as
// the watchdog parses them, exec within write, and SIGTERM's grace plus
// drain within Kubernetes' default 30 s termination grace period.
func checkWatchdogTimeouts(t *testing.T, name string, env map[string]string) {
	t.Helper()
	d := map[string]time.Duration{}
	for _, k := range []string{"read_timeout", "write_timeout", "exec_timeout", "healthcheck_interval"} {
		v, ok := env[k]
		if !ok {
			t.Errorf("%s: environment has no %s", name, k)
			continue
		}
		dur, err := time.ParseDuration(v)
		if n, ierr := strconv.Atoi(v); ierr == nil {
			dur, err = time.Duration(n)*time.Second, nil
		}
		if err != nil || dur <= 0 {
			t.Errorf("%s: %s = %q is not a positive duration", name, k, v)
		}
		d[k] = dur
	}
	if d["exec_timeout"] > d["write_timeout"] {
		t.Errorf("%s: exec_timeout %s is above write_timeout %s", name, d["exec_timeout"], d["write_timeout"])
	}
	if total := d["healthcheck_interval"] + d["write_timeout"]; total >= 30*time.Second {
		t.Errorf("%s: healthcheck_interval + write_timeout = %s, not within the 30 s termination grace period", name, total)
	}
	if d["write_timeout"] >= 30*time.Second {
		t.Errorf("%s: write_timeout %s is not under the connector's default upstream_timeout (30s)", name, d["write_timeout"])
	}
}

func checkScaling(t *testing.T, name string, labels *map[string]string) {
	t.Helper()
	if labels == nil {
		t.Errorf("%s: no labels", name)
		return
	}
	lo, err1 := strconv.Atoi((*labels)["com.openfaas.scale.min"])
	hi, err2 := strconv.Atoi((*labels)["com.openfaas.scale.max"])
	if err1 != nil || err2 != nil || lo < 1 || hi < lo {
		t.Errorf("%s: com.openfaas.scale.min %q and max %q, want 1 <= min <= max", name,
			(*labels)["com.openfaas.scale.min"], (*labels)["com.openfaas.scale.max"])
	}
}

// TestStackTokenExample: the commented-out token lines of the mailbox
// function, once uncommented as stack.yml says, still decode strictly as
// go-sdk's stack, mount the secret the mailbox reads its token from, and
// are settings the mailbox accepts. The function's name is also the
// mailbox's default mailbox_function, so that it never targets itself.
func TestStackTokenExample(t *testing.T) {
	t.Setenv("REGISTRY", "")
	t.Setenv("TAG", "")
	root := repoRoot(t)
	raw, err := os.ReadFile(filepath.Join(root, "stack.yml"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	uncomment := map[string]string{
		"      # auth_token_secret: mailbox-token\n": "      auth_token_secret: mailbox-token\n",
		"      # requeue_auth: \"true\"\n":           "      requeue_auth: \"true\"\n",
		"    # secrets: [mailbox-token]\n":           "    secrets: [mailbox-token]\n",
	}
	for from, to := range uncomment {
		if strings.Count(text, from) != 1 {
			t.Fatalf("stack.yml does not have the line %q once", strings.TrimSpace(from))
		}
		text = strings.Replace(text, from, to, 1)
	}
	file := filepath.Join(t.TempDir(), "stack.yml")
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := fnbuild.LoadStack(file)
	if err != nil {
		t.Fatalf("stack.yml with the token lines uncommented: %v", err)
	}
	fn := s.Functions["mailbox"]
	if !slices.Equal(fn.Secrets, []string{"mailbox-token"}) {
		t.Errorf("secrets %q, want [mailbox-token]", fn.Secrets)
	}

	// The mailbox's own settings (of-watchdog's left out) load, and it
	// reads the token from the file OpenFaaS mounts the secret as.
	var environ []string
	for k, v := range fn.Environment {
		switch k {
		case "read_timeout", "write_timeout", "exec_timeout", "healthcheck_interval":
			continue
		}
		environ = append(environ, k+"="+v)
	}
	cfg, err := config.Load(config.Environ(environ), nil)
	if err != nil {
		t.Fatalf("the mailbox rejects the environment: %v", err)
	}
	if cfg.AuthTokenSecret != "mailbox-token" || !cfg.RequeueAuth || cfg.SecretMountPath != "/var/openfaas/secrets" {
		t.Errorf("auth_token_secret %q, requeue_auth %v, secret_mount_path %q; want mailbox-token, true, OpenFaaS's /var/openfaas/secrets",
			cfg.AuthTokenSecret, cfg.RequeueAuth, cfg.SecretMountPath)
	}
	if _, ok := s.Functions[cfg.MailboxFunction]; !ok {
		t.Errorf("mailbox_function defaults to %q, not the function stack.yml deploys", cfg.MailboxFunction)
	}

	// As shipped, the lines stay commented: requeues stay open.
	if env := loadStack(t).Functions["mailbox"].Environment; env["auth_token_secret"] != "" {
		t.Errorf("stack.yml sets auth_token_secret %q; the token is optional", env["auth_token_secret"])
	}
}
