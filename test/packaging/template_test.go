package packaging

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	digest "github.com/opencontainers/go-digest"
	"github.com/openfaas/go-sdk/stack"
	"gopkg.in/yaml.v3"

	"github.com/openfaas/mailbox/test/internal/fnbuild"
)

const templateName = "mailbox-go"

// templateDir is template/mailbox-go in the repository.
func templateDir(t testing.TB) string {
	return filepath.Join(repoRoot(t), "template", templateName)
}

// parseDockerfile parses the Dockerfile in dir with BuildKit's parser and
// its linter (the checks of `docker build --check`): a parser or lint
// warning fails the test.
func parseDockerfile(t testing.TB, dir string) *fnbuild.Dockerfile {
	t.Helper()
	d, err := fnbuild.ParseDockerfile(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range d.Warnings {
		t.Error(w)
	}
	return d
}

// stage returns the stage of d called name.
func stage(t testing.TB, d *fnbuild.Dockerfile, name string) instructions.Stage {
	t.Helper()
	s, err := d.Stage(name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// baseImage is a stage's FROM image with the global ARGs' defaults expanded.
func baseImage(d *fnbuild.Dockerfile, s instructions.Stage) string {
	var env []string
	for k, v := range d.MetaArgs {
		env = append(env, k+"="+v)
	}
	return fnbuild.Word(s.BaseName, env)
}

func TestTemplateYAML(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join(templateDir(t), "template.yml"))
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var tmpl stack.LanguageTemplate
	if err := dec.Decode(&tmpl); err != nil {
		t.Fatalf("template.yml does not decode strictly into go-sdk's stack.LanguageTemplate: %v", err)
	}
	if tmpl.Language != templateName || tmpl.FProcess != "/usr/bin/handler" || tmpl.HandlerFolder != "" {
		t.Errorf("template.yml: language %q, fprocess %q, handler_folder %q; want %s, /usr/bin/handler, the default",
			tmpl.Language, tmpl.FProcess, tmpl.HandlerFolder, templateName)
	}
	for _, want := range []string{"func New(environ []string, logs io.Writer) (http.Handler, func() error, error)", "configuration.copy"} {
		if !strings.Contains(tmpl.WelcomeMessage, want) {
			t.Errorf("welcome_message does not mention %q", want)
		}
	}
	// faas-cli new copies function/ into a new handler folder.
	if _, err := os.Stat(filepath.Join(templateDir(t), "function", "handler.go")); err != nil {
		t.Errorf("the template has no starter handler for faas-cli new: %v", err)
	}
}

func TestTemplateDockerfile(t *testing.T) {
	t.Parallel()
	d := parseDockerfile(t, templateDir(t))
	if got := stageNames(d.Stages); !slices.Equal(got, []string{"watchdog", "build", "ship"}) {
		t.Fatalf("stages %q, want watchdog, build, ship", got)
	}

	// of-watchdog from its image, for the target platform.
	wd := stage(t, d, "watchdog")
	if base := baseImage(d, wd); !regexp.MustCompile(`^ghcr\.io/openfaas/of-watchdog:\d+\.\d+\.\d+$`).MatchString(base) ||
		wd.Platform != "" || len(wd.Commands) != 0 {
		t.Errorf("watchdog stage: FROM --platform=%s %s with %d commands; want ghcr.io/openfaas/of-watchdog:<version> for the target platform (the default), nothing else",
			wd.Platform, base, len(wd.Commands))
	}

	// The build stage: the Go of go.mod, on the build platform.
	build := stage(t, d, "build")
	goVersion := goDirective(t)
	if base := baseImage(d, build); base != "golang:"+goVersion+"-alpine" || build.Platform != "${BUILDPLATFORM}" {
		t.Errorf("build stage: FROM --platform=%s %s; want golang:%s-alpine (go.mod's go, as golang images do not switch toolchains) on the build platform",
			build.Platform, base, goVersion)
	}
	runs := runLines(build)
	testAt := indexOf(runs, func(r string) bool { return strings.Contains(r, "go test ./...") })
	buildAt := indexOf(runs, func(r string) bool { return strings.Contains(r, "go build ") })
	switch {
	case testAt < 0:
		t.Errorf("build stage runs no go test: %q", runs)
	case buildAt < 0:
		t.Errorf("build stage runs no go build: %q", runs)
	case testAt > buildAt:
		t.Errorf("build stage builds before it tests: %q", runs)
	default:
		if !strings.Contains(runs[buildAt], "GOOS=${TARGETOS} GOARCH=${TARGETARCH}") || !strings.Contains(runs[buildAt], "-o handler .") {
			t.Errorf("go build %q does not cross-compile ./handler for the target", runs[buildAt])
		}
	}
	if env := envOf(build); env["CGO_ENABLED"] != "0" {
		t.Errorf("build stage: CGO_ENABLED=%q, want 0 for a static binary", env["CGO_ENABLED"])
	}
	// The platform ARGs come after the tests, so that a multi-arch build
	// runs them once.
	args, firstArgAfter := argsOf(build, testAt)
	for _, a := range []string{"TARGETPLATFORM", "BUILDPLATFORM", "TARGETOS", "TARGETARCH"} {
		if !slices.Contains(args, a) {
			t.Errorf("build stage does not declare ARG %s", a)
		}
	}
	if !firstArgAfter {
		t.Errorf("build stage declares the platform ARGs before go test")
	}

	// The image: watchdog and handler, a non-root user by number, the
	// watchdog in HTTP mode in front of the handler.
	ship := stage(t, d, "ship")
	if d.Stages[len(d.Stages)-1].Name != "ship" || ship.Platform != "" {
		t.Errorf("the last stage is %q on %q, want ship on the target platform (the default)", d.Stages[len(d.Stages)-1].Name, ship.Platform)
	}
	copies := map[string]string{}
	var user, cmd string
	var healthcheck []string
	for _, c := range ship.Commands {
		switch c := c.(type) {
		case *instructions.CopyCommand:
			copies[c.DestPath] = c.From + ":" + strings.Join(c.SourcePaths, " ")
		case *instructions.UserCommand:
			user = c.User
		case *instructions.CmdCommand:
			cmd = strings.Join(c.CmdLine, " ")
			if c.PrependShell {
				t.Errorf("CMD %q is in shell form; the image has no shell", cmd)
			}
		case *instructions.HealthCheckCommand:
			healthcheck = c.Health.Test
		case *instructions.RunCommand:
			t.Errorf("ship stage runs %q: it would need emulation for another platform, and the image has no shell", c.CmdLine)
		}
	}
	if copies["/usr/bin/fwatchdog"] != "watchdog:/fwatchdog" || copies["/usr/bin/handler"] != "build:/go/src/handler/handler" {
		t.Errorf("ship stage copies %v, want /fwatchdog from watchdog and /go/src/handler/handler from build", copies)
	}
	if uid, gid, ok := strings.Cut(user, ":"); !ok || !nonRootID(uid) || !nonRootID(gid) {
		t.Errorf("USER %q, want a numeric non-root uid:gid (runAsNonRoot cannot check a name)", user)
	}
	env := envOf(ship)
	for k, v := range map[string]string{
		"mode": "http", "upstream_url": "http://127.0.0.1:8082", "fprocess": "/usr/bin/handler",
	} {
		if env[k] != v {
			t.Errorf("ship stage: ENV %s=%q, want %q", k, env[k], v)
		}
	}
	if cmd != "/usr/bin/fwatchdog" {
		t.Errorf("CMD %q, want the watchdog", cmd)
	}
	if !slices.Equal(healthcheck, []string{"CMD", "/usr/bin/fwatchdog", "--run-healthcheck"}) {
		t.Errorf("HEALTHCHECK %q, want the watchdog's lock-file check", healthcheck)
	}
	if !strings.HasPrefix(baseImage(d, ship), "gcr.io/distroless/static") {
		t.Errorf("ship stage FROM %s, want a distroless static image", baseImage(d, ship))
	}
}

// TestTemplateDockerfileCheck runs BuildKit's whole lint, as
// `docker build --check` does: the rules that need the stages resolved
// too (RedundantTargetPlatform, UndefinedVar, UndefinedArgInFrom...). Base
// images resolve to an empty configuration instead of a registry.
func TestTemplateDockerfileCheck(t *testing.T) {
	t.Parallel()
	dt, err := os.ReadFile(filepath.Join(templateDir(t), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	src := llb.NewSourceMap(nil, "Dockerfile", "Dockerfile", dt)
	src.Definition = &llb.Definition{}
	res, err := dockerfile2llb.DockerfileLint(t.Context(), dt, dockerfile2llb.ConvertOpt{
		SourceMap:    src,
		MetaResolver: offlineResolver{},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range res.Warnings {
		t.Errorf("Dockerfile: %s: %s", w.RuleName, w.Detail)
	}
	if res.Error != nil {
		t.Errorf("Dockerfile: %s", res.Error.Message)
	}
}

// offlineResolver resolves every image to an empty linux configuration.
type offlineResolver struct{}

func (offlineResolver) ResolveImageConfig(_ context.Context, ref string, _ sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	cfg := []byte(`{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}}`)
	return ref, digest.FromBytes(cfg), cfg, nil
}

// goDirective is the go version of the repository's go.mod.
func goDirective(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("go.mod has no go directive")
	}
	return string(m[1])
}

func stageNames(stages []instructions.Stage) []string {
	var names []string
	for _, s := range stages {
		names = append(names, s.Name)
	}
	return names
}

// runLines are a stage's RUN command lines, in order.
func runLines(s instructions.Stage) []string {
	var out []string
	for _, c := range s.Commands {
		if r, ok := c.(*instructions.RunCommand); ok {
			out = append(out, strings.Join(r.CmdLine, " "))
		}
	}
	return out
}

// envOf is every ENV a stage sets, as the image has it.
func envOf(s instructions.Stage) map[string]string {
	env := map[string]string{}
	for _, c := range s.Commands {
		if e, ok := c.(*instructions.EnvCommand); ok {
			for _, kv := range e.Env {
				env[kv.Key] = fnbuild.Word(kv.Value, nil)
			}
		}
	}
	return env
}

// argsOf lists the ARGs a stage declares, and reports whether every
// platform ARG (TARGET*, BUILD*) comes after its RUN number runIndex.
func argsOf(s instructions.Stage, runIndex int) (names []string, afterRun bool) {
	afterRun = true
	run := -1
	for _, c := range s.Commands {
		switch c := c.(type) {
		case *instructions.RunCommand:
			run++
		case *instructions.ArgCommand:
			for _, kv := range c.Args {
				names = append(names, kv.Key)
				if strings.HasPrefix(kv.Key, "TARGET") || strings.HasPrefix(kv.Key, "BUILD") {
					if run < runIndex {
						afterRun = false
					}
				}
			}
		}
	}
	return names, afterRun
}

func indexOf(list []string, f func(string) bool) int {
	for i, s := range list {
		if f(s) {
			return i
		}
	}
	return -1
}

func nonRootID(s string) bool {
	n, err := strconv.Atoi(s)
	return err == nil && n > 0
}
