package chart

import (
	"bufio"
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/patternmatcher"
)

// dockerfile parses connector/Dockerfile as BuildKit does, with its linter
// (the checks of `docker build --check`); a lint warning fails the test.
func dockerfile(t *testing.T) (stages []instructions.Stage, metaArgs []instructions.ArgCommand) {
	t.Helper()
	res, err := parser.Parse(strings.NewReader(readFile(t, "connector", "Dockerfile")))
	if err != nil {
		t.Fatalf("parse connector/Dockerfile: %v", err)
	}
	for _, w := range res.Warnings {
		t.Errorf("connector/Dockerfile: parser warning: %s", w.Short)
	}
	lint := linter.New(&linter.Config{Warn: func(rule, _, _, msg string, loc []parser.Range) {
		t.Errorf("connector/Dockerfile: %s: %s (line %v)", rule, msg, loc)
	}})
	stages, metaArgs, err = instructions.Parse(res.AST, lint)
	if err != nil {
		t.Fatalf("connector/Dockerfile: %v", err)
	}
	return stages, metaArgs
}

// goVersion is the go directive of the root go.mod.
func goVersion(t *testing.T) string {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(readFile(t, "go.mod")))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "go "); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatal("go.mod has no go directive")
	return ""
}

// TestDockerfile checks the connector's Dockerfile: a builder stage on the
// build platform with golang at go.mod's Go version, cross-compiling with
// the TARGET* build args and CGO_ENABLED=0, and a final stage on distroless
// static that runs the binary as a non-root user and exposes 8081.
func TestDockerfile(t *testing.T) {
	t.Parallel()
	stages, metaArgs := dockerfile(t)
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a builder and a final stage", len(stages))
	}
	args := map[string]string{}
	for _, a := range metaArgs {
		for _, kv := range a.Args {
			if kv.Value != nil {
				args[kv.Key] = *kv.Value
			}
		}
	}

	builder, final := stages[0], stages[len(stages)-1]
	if builder.Platform != "${BUILDPLATFORM}" && builder.Platform != "$BUILDPLATFORM" {
		t.Errorf("builder platform %q, want $BUILDPLATFORM (cross-compile, no emulation)", builder.Platform)
	}
	base := expand(builder.BaseName, args)
	if want := "golang:" + goVersion(t); base != want && !strings.HasPrefix(base, want+"-") {
		t.Errorf("builder image %s, want %s (go.mod's Go version)", base, want)
	}

	var stageArgs []string
	var build *instructions.RunCommand
	for _, cmd := range builder.Commands {
		switch c := cmd.(type) {
		case *instructions.ArgCommand:
			for _, kv := range c.Args {
				stageArgs = append(stageArgs, kv.Key)
			}
		case *instructions.RunCommand:
			if strings.Contains(strings.Join(c.CmdLine, " "), "go build") {
				build = c
			}
		}
	}
	for _, a := range []string{"TARGETPLATFORM", "BUILDPLATFORM", "TARGETOS", "TARGETARCH"} {
		if !slices.Contains(stageArgs, a) {
			t.Errorf("builder stage does not declare ARG %s", a)
		}
	}
	if build == nil {
		t.Fatal("builder stage has no RUN go build")
	}
	line := strings.Join(build.CmdLine, " ")
	for _, w := range []string{"CGO_ENABLED=0", "GOOS=${TARGETOS}", "GOARCH=${TARGETARCH}", "./connector"} {
		if !strings.Contains(line, w) {
			t.Errorf("go build line %q lacks %s", line, w)
		}
	}

	if !strings.HasPrefix(final.BaseName, "gcr.io/distroless/static") || !strings.HasSuffix(final.BaseName, ":nonroot") {
		t.Errorf("final image %s, want distroless static, nonroot", final.BaseName)
	}
	var user string
	var exposed []string
	var entrypoint *instructions.EntrypointCommand
	var binary string // where the final stage puts the builder's output
	for _, cmd := range final.Commands {
		switch c := cmd.(type) {
		case *instructions.UserCommand:
			user = c.User
		case *instructions.ExposeCommand:
			exposed = append(exposed, c.Ports...)
		case *instructions.EntrypointCommand:
			entrypoint = c
		case *instructions.CopyCommand:
			if c.From == builder.Name {
				binary = c.DestPath
			}
		case *instructions.RunCommand:
			t.Errorf("final stage runs %v: distroless has no shell", c.CmdLine)
		}
	}
	uid, _, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("final USER %q, want a numeric non-root user (runAsNonRoot can check only a number)", user)
	}
	if !slices.Contains(exposed, "8081") {
		t.Errorf("EXPOSE %v, want 8081", exposed)
	}
	if entrypoint == nil || entrypoint.PrependShell || len(entrypoint.CmdLine) == 0 {
		t.Errorf("ENTRYPOINT %+v, want the exec form", entrypoint)
	} else if entrypoint.CmdLine[0] != binary {
		t.Errorf("ENTRYPOINT runs %s, the binary from %s is copied to %q", entrypoint.CmdLine[0], builder.Name, binary)
	}
}

// expand substitutes ${NAME} and $NAME from args.
func expand(s string, args map[string]string) string {
	return os.Expand(s, func(k string) string { return args[k] })
}

// TestDockerBuildContext: the build context is the repository root, and
// its COPY instructions and .dockerignore leave in every package the
// connector is built from.
func TestDockerBuildContext(t *testing.T) {
	t.Parallel()
	stages, _ := dockerfile(t)
	var copied []string
	for _, cmd := range stages[0].Commands {
		if c, ok := cmd.(*instructions.CopyCommand); ok && c.From == "" {
			for _, src := range c.SourcePaths {
				copied = append(copied, strings.TrimSuffix(filepath.Clean(src), "/"))
			}
		}
	}

	ignore, err := patternmatcher.New(ignorePatterns(t))
	if err != nil {
		t.Fatal(err)
	}
	need := []string{"go.mod", "go.sum"}
	out, err := goCmd(repoRoot, "list", "-deps", "-f", "{{if not .Standard}}{{.Dir}}{{end}}", "./connector").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	abs, _ := filepath.Abs(repoRoot)
	for dir := range strings.Lines(string(out)) {
		rel, err := filepath.Rel(abs, strings.TrimSpace(dir))
		if err != nil || strings.HasPrefix(rel, "..") {
			continue // a module dependency, downloaded in the build
		}
		need = append(need, filepath.ToSlash(filepath.Join(rel, "x.go")))
	}
	if len(need) < 4 {
		t.Fatalf("go list found only %v", need)
	}
	for _, f := range need {
		if ok, _ := ignore.MatchesOrParentMatches(f); ok {
			t.Errorf(".dockerignore leaves %s out of the build context", f)
		}
		if !slices.ContainsFunc(copied, func(src string) bool { return f == src || strings.HasPrefix(f, src+"/") }) {
			t.Errorf("no COPY brings %s into the builder (COPY sources %v)", f, copied)
		}
	}
	if ok, _ := ignore.MatchesOrParentMatches(".git/HEAD"); !ok {
		t.Error(".dockerignore sends .git to the daemon")
	}
}

func ignorePatterns(t *testing.T) []string {
	var out []string
	for line := range strings.Lines(readFile(t, ".dockerignore")) {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") {
			out = append(out, line)
		}
	}
	return out
}

func goCmd(dir string, args ...string) *exec.Cmd {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	return cmd
}

// TestConnectorBuildsStatic runs the Dockerfile's build for this machine's
// architecture (CGO_ENABLED=0, linux) and checks that the binary is
// statically linked, as distroless static requires.
func TestConnectorBuildsStatic(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the connector")
	}
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "connector")
	cmd := goCmd(repoRoot, "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./connector")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("go build: %v\n%s", err, stderr.String())
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("the connector is dynamically linked (program header %v)", p.Type)
		}
	}
}
