// Package fnbuild builds the OpenFaaS functions of a stack file the way
// faas-cli does, without Docker: go-sdk's builder.CreateBuildContext lays
// out each function's build context, then the build stage of the
// template's Dockerfile (parsed with BuildKit's instructions package) runs
// natively in that context, each RUN with sh. The build stage's WORKDIR is
// the context directory, its COPYs are checked to copy the context onto
// itself, and any other instruction is an error, so that what runs here is
// exactly what the image build runs. The result is the handler binary
// that the image's last stage would ship.
package fnbuild

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/openfaas/go-sdk/builder"
	"github.com/openfaas/go-sdk/stack"
	"gopkg.in/yaml.v3"

	"github.com/openfaas/mailbox/test/internal/proc"
)

// BuildStage is the name of the template's stage that builds the handler.
const BuildStage = "build"

// containerWorkdir is the build stage's WORKDIR, where the build context
// is copied; it is mapped to the context's directory.
const containerWorkdir = "/go/src/handler"

// Function is one built function.
type Function struct {
	Name    string
	Context string // the build context directory faas-cli would send to the image build
	Binary  string // the built handler binary (Context/handler)
	Runs    []Run  // each RUN of the build stage, in order
}

// Run is one RUN of the build stage.
type Run struct {
	Command string // as in the Dockerfile
	Output  string // stdout and stderr
	Took    time.Duration
}

// Build builds the named functions of the stack file stackFile into
// outDir, which must be outside the stack file's directory: a context is
// removed and created again there, and a copy of the project must not
// land in the project. All the contexts are created before any is built.
//
// Creating a context changes the process's working directory for a
// moment; see CreateContext.
func Build(stackFile string, names []string, outDir string) ([]Function, error) {
	s, err := LoadStack(stackFile)
	if err != nil {
		return nil, err
	}
	fns := make([]Function, len(names))
	for i, name := range names {
		dir, err := s.CreateContext(name, outDir)
		if err != nil {
			return nil, err
		}
		fns[i] = Function{Name: name, Context: dir, Binary: filepath.Join(dir, "handler")}
	}
	for i, fn := range fns {
		// The Dockerfile of the context, which the image build would use:
		// the template's. Its lint warnings are the packaging test's
		// business; docker build only prints them.
		d, err := ParseDockerfile(fn.Context)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", fn.Name, err)
		}
		fns[i].Runs, err = RunBuildStage(d, fn.Context)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", fn.Name, err)
		}
		if _, err := os.Stat(fn.Binary); err != nil {
			return nil, fmt.Errorf("%s: the build stage made no handler: %w", fn.Name, err)
		}
	}
	return fns, nil
}

// Stack is a parsed stack file.
type Stack struct {
	*stack.Services
	// Dir is the stack file's directory, where faas-cli runs: the
	// template, handler and copy paths are relative to it.
	Dir string
}

// LoadStack parses a stack file as faas-cli does (environment variables
// substituted), after checking that it decodes strictly into go-sdk's
// schema, so that a misspelt key is an error instead of being ignored.
func LoadStack(file string) (*Stack, error) {
	abs, err := filepath.Abs(file)
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(abs)
	if err != nil {
		return nil, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	var strict stack.Services
	if err := dec.Decode(&strict); err != nil {
		return nil, fmt.Errorf("%s does not decode strictly into go-sdk's stack.Services: %w", filepath.Base(abs), err)
	}
	services, err := stack.ParseYAMLFile(abs, "", "", true)
	if err != nil {
		return nil, fmt.Errorf("stack.ParseYAMLFile: %w", err)
	}
	return &Stack{Services: services, Dir: filepath.Dir(abs)}, nil
}

// cwdMu serialises CreateContext's changes of the working directory.
var cwdMu sync.Mutex

// CreateContext creates the build context of the function name in
// outDir/name with go-sdk's builder.CreateBuildContext, as faas-cli build
// does, and returns its directory (absolute). outDir must be outside the
// stack's directory.
//
// CreateBuildContext resolves the configuration.copy paths against the
// working directory (it checks each is inside "." and copies it to the
// same relative path under function/), so there is no passing them
// otherwise: CreateContext changes the process's working directory to
// the stack's for the call, and back. Calls are serialised with each
// other, but anything else using relative paths or starting programs
// meanwhile sees the stack's directory.
func (s *Stack) CreateContext(name, outDir string) (dir string, err error) {
	fn, ok := s.Functions[name]
	if !ok {
		return "", fmt.Errorf("%s: no such function in the stack file", name)
	}
	// Made absolute before the working directory changes.
	out, err := filepath.Abs(outDir)
	if err != nil {
		return "", err
	}
	if out == s.Dir || strings.HasPrefix(out, s.Dir+string(filepath.Separator)) {
		return "", fmt.Errorf("build directory %s is inside %s", out, s.Dir)
	}

	cwdMu.Lock()
	defer cwdMu.Unlock()
	prev, err := os.Getwd()
	if err != nil {
		return "", err
	}
	if err := os.Chdir(s.Dir); err != nil {
		return "", err
	}
	defer func() {
		if cerr := os.Chdir(prev); cerr != nil {
			err = errors.Join(err, fmt.Errorf("restoring the working directory: %w", cerr))
		}
	}()
	dir, err = builder.CreateBuildContext(name, fn.Handler, fn.Language, s.StackConfiguration.CopyExtraPaths,
		builder.WithBuildDir(out))
	if err != nil {
		return "", fmt.Errorf("%s: CreateBuildContext: %w", name, err)
	}
	return dir, nil
}

// Dockerfile is a Dockerfile as BuildKit reads it.
type Dockerfile struct {
	Stages   []instructions.Stage
	MetaArgs map[string]string // global ARGs and their defaults
	// Warnings are the parser's and the linter's (the checks of
	// `docker build --check` that need no resolved stages).
	Warnings []string
}

// ParseDockerfile parses the Dockerfile in dir with BuildKit's parser and
// its linter.
func ParseDockerfile(dir string) (*Dockerfile, error) {
	b, err := os.ReadFile(filepath.Join(dir, "Dockerfile"))
	if err != nil {
		return nil, err
	}
	res, err := parser.Parse(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("Dockerfile: %w", err)
	}
	d := &Dockerfile{MetaArgs: map[string]string{}}
	for _, w := range res.Warnings {
		d.Warnings = append(d.Warnings, "Dockerfile: parser warning: "+w.Short)
	}
	lint := linter.New(&linter.Config{Warn: func(rule, _, _, msg string, loc []parser.Range) {
		d.Warnings = append(d.Warnings, fmt.Sprintf("Dockerfile: lint %s: %s (at %v)", rule, msg, loc))
	}})
	var metaArgs []instructions.ArgCommand
	d.Stages, metaArgs, err = instructions.Parse(res.AST, lint)
	if err != nil {
		return nil, fmt.Errorf("Dockerfile: %w", err)
	}
	for _, a := range metaArgs {
		for _, kv := range a.Args {
			d.MetaArgs[kv.Key] = kv.ValueString()
		}
	}
	return d, nil
}

// Stage returns the stage called name.
func (d *Dockerfile) Stage(name string) (instructions.Stage, error) {
	for _, s := range d.Stages {
		if s.Name == name {
			return s, nil
		}
	}
	return instructions.Stage{}, fmt.Errorf("Dockerfile has no stage %q", name)
}

// Word processes a Dockerfile word as BuildKit does (quotes removed,
// variables from env expanded); a word it cannot process is returned as
// it is, for the callers' messages to show.
func Word(w string, env []string) string {
	out, _, err := shell.NewLex('\\').ProcessWord(w, shell.EnvsFromSlice(env))
	if err != nil {
		return w
	}
	return out
}

// RunBuildStage runs the build stage of d in dir, a build context:
// WORKDIR /go/src/handler is dir, the COPYs are checked to copy the
// context onto itself, and every RUN runs with sh in that directory with
// this process's environment plus the stage's ENV and ARGs, the platform
// ARGs set to this machine's as BuildKit would for a native build. Any
// other instruction is an error. It returns the RUNs that succeeded, also
// when a later one fails.
func RunBuildStage(d *Dockerfile, dir string) ([]Run, error) {
	build, err := d.Stage(BuildStage)
	if err != nil {
		return nil, err
	}
	platform := runtime.GOOS + "/" + runtime.GOARCH
	buildArgs := map[string]string{
		"TARGETPLATFORM": platform, "BUILDPLATFORM": platform,
		"TARGETOS": runtime.GOOS, "TARGETARCH": runtime.GOARCH,
	}
	env := map[string]string{}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	workdir := "/"
	var runs []Run
	for _, c := range build.Commands {
		switch c := c.(type) {
		case *instructions.ArgCommand:
			for _, kv := range c.Args {
				switch v, ok := buildArgs[kv.Key]; {
				case ok:
					env[kv.Key] = v
				case kv.Value != nil:
					env[kv.Key] = Word(*kv.Value, proc.Environ(env))
				default:
					// Not passed: Docker leaves it unset.
					delete(env, kv.Key)
				}
			}
		case *instructions.EnvCommand:
			for _, kv := range c.Env {
				env[kv.Key] = Word(kv.Value, proc.Environ(env))
			}
		case *instructions.WorkdirCommand:
			workdir = path.Join(workdir, c.Path)
			if path.IsAbs(c.Path) {
				workdir = path.Clean(c.Path)
			}
		case *instructions.CopyCommand:
			if err := checkSelfCopy(dir, workdir, c); err != nil {
				return runs, err
			}
		case *instructions.RunCommand:
			if !c.PrependShell || len(c.CmdLine) != 1 {
				return runs, fmt.Errorf("RUN %q: only shell-form RUN is run here", c.CmdLine)
			}
			rel, err := mapWorkdir(workdir)
			if err != nil {
				return runs, err
			}
			start := time.Now()
			cmd := exec.Command("sh", "-c", c.CmdLine[0])
			cmd.Dir = filepath.Join(dir, rel)
			cmd.Env = proc.Environ(env)
			out, err := cmd.CombinedOutput()
			if err != nil {
				return runs, fmt.Errorf("RUN %s (in %s): %w\n%s", c.CmdLine[0], rel, err, out)
			}
			runs = append(runs, Run{Command: c.CmdLine[0], Output: string(out), Took: time.Since(start)})
		default:
			return runs, fmt.Errorf("build stage: %s is not run here; teach RunBuildStage or drop it", c.Name())
		}
	}
	return runs, nil
}

// checkSelfCopy checks that a COPY of the build stage puts each source at
// the same path under the workdir as in the context: the context already
// is the workdir, so the copy changes nothing.
func checkSelfCopy(dir, workdir string, c *instructions.CopyCommand) error {
	if c.From != "" {
		return fmt.Errorf("COPY --from=%s in the build stage is not run here", c.From)
	}
	dest := c.DestPath
	if !path.IsAbs(dest) {
		dest = path.Join(workdir, dest)
	}
	for _, src := range c.SourcePaths {
		if _, err := os.Stat(filepath.Join(dir, src)); err != nil {
			return fmt.Errorf("COPY %s: not in the context: %w", src, err)
		}
		target := dest
		if src != "." && strings.HasSuffix(c.DestPath, "/") {
			target = path.Join(dest, path.Base(src))
		}
		if want := path.Join(containerWorkdir, src); target != want {
			return fmt.Errorf("COPY %s %s copies to %s, not to %s: it cannot be mapped onto the context", src, c.DestPath, target, want)
		}
	}
	return nil
}

// mapWorkdir returns the workdir relative to the context.
func mapWorkdir(workdir string) (string, error) {
	rel, err := filepath.Rel(containerWorkdir, workdir)
	if err != nil || strings.HasPrefix(rel, "..") {
		return "", fmt.Errorf("WORKDIR %s is outside %s, where the context is", workdir, containerWorkdir)
	}
	return rel, nil
}
