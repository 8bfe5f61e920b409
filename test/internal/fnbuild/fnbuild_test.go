package fnbuild

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeFiles writes files (path: content) under dir.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// tinyStack writes a stack of one function, fn, whose template's build
// stage is buildStage, and returns the stack file.
func tinyStack(t *testing.T, buildStage string) string {
	t.Helper()
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"stack.yml": `version: 1.0
provider:
  name: openfaas
configuration:
  copy:
    - ./shared
functions:
  fn:
    lang: tiny
    handler: ./fn
    image: example.com/fn:latest
`,
		"template/tiny/Dockerfile": "FROM alpine:3 AS build\n" + buildStage +
			"\nFROM scratch AS ship\nCOPY --from=build /go/src/handler/handler /handler\n",
		"template/tiny/template.yml": "language: tiny\n",
		"fn/main.sh":                 "#!/bin/sh\necho fn\n",
		"shared/data.txt":            "shared\n",
	})
	return filepath.Join(dir, "stack.yml")
}

func TestBuild(t *testing.T) {
	stackFile := tinyStack(t, `ARG TARGETOS
ARG UNSET
ENV GREETING=hello
WORKDIR /go/src/handler
COPY template.yml ./
COPY . .
RUN test -f function/shared/data.txt && test -f function/main.sh && echo "$GREETING $TARGETOS${UNSET:-}" > built.txt
WORKDIR function
RUN cp main.sh ../handler && echo copied`)
	cwd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	fns, err := Build(stackFile, []string{"fn"}, out)
	if err != nil {
		t.Fatal(err)
	}
	if now, _ := os.Getwd(); now != cwd {
		t.Errorf("working directory is %s after Build, was %s", now, cwd)
	}
	if len(fns) != 1 {
		t.Fatalf("Build returned %d functions", len(fns))
	}
	fn := fns[0]
	if fn.Name != "fn" || fn.Context != filepath.Join(out, "fn") || fn.Binary != filepath.Join(out, "fn", "handler") {
		t.Errorf("function %+v", fn)
	}
	if b, err := os.ReadFile(filepath.Join(fn.Context, "built.txt")); err != nil || string(b) != "hello linux\n" {
		t.Errorf("built.txt = %q, %v; want the ENV and the platform ARG", b, err)
	}
	if len(fn.Runs) != 2 || !strings.HasPrefix(fn.Runs[1].Command, "cp main.sh") || fn.Runs[1].Output != "copied\n" {
		t.Errorf("runs %+v", fn.Runs)
	}
}

func TestBuildRefuses(t *testing.T) {
	for name, tc := range map[string]struct{ stage, want string }{
		"another instruction": {"WORKDIR /go/src/handler\nUSER nobody", "USER is not run here"},
		"a COPY elsewhere":    {"WORKDIR /go/src/handler\nCOPY . /app/", "cannot be mapped onto the context"},
		"a WORKDIR outside":   {"WORKDIR /tmp\nRUN true", "outside /go/src/handler"},
		"a failing RUN":       {"WORKDIR /go/src/handler\nRUN echo oops; exit 1", "oops"},
		"no handler":          {"WORKDIR /go/src/handler\nRUN true", "made no handler"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Build(tinyStack(t, tc.stage), []string{"fn"}, t.TempDir())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Build = %v, want an error with %q", err, tc.want)
			}
		})
	}

	stackFile := tinyStack(t, "RUN true")
	if _, err := Build(stackFile, []string{"fn"}, filepath.Join(filepath.Dir(stackFile), "build")); err == nil {
		t.Error("Build into the stack's directory did not fail")
	}
	if _, err := Build(stackFile, []string{"nope"}, t.TempDir()); err == nil {
		t.Error("Build of a function not in the stack did not fail")
	}
}

func TestLoadStackStrict(t *testing.T) {
	stackFile := tinyStack(t, "RUN true")
	b, err := os.ReadFile(stackFile)
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, filepath.Dir(stackFile), map[string]string{"stack.yml": strings.Replace(string(b), "handler:", "handlr:", 1)})
	if _, err := LoadStack(stackFile); err == nil || !strings.Contains(err.Error(), "strictly") {
		t.Errorf("LoadStack with a misspelt key = %v", err)
	}
}
