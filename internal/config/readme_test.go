package config

import (
	"flag"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the README's settings table from Settings()")

// TestREADMETable keeps the README's settings table the table of
// Settings(): go test ./internal/config -run TestREADMETable -update
// rewrites it.
func TestREADMETable(t *testing.T) {
	const path = "../../README.md"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	const head = "| setting | flag | default | meaning |\n| --- | --- | --- | --- |\n"
	start := strings.Index(readme, head)
	if start < 0 {
		t.Fatalf("%s has no settings table starting %q", path, head)
	}
	start += len(head)
	end := start + strings.Index(readme[start:], "\n\n") + 1
	var want strings.Builder
	for _, s := range Settings() {
		def := "`" + s.Default + "`"
		if s.Default == "" {
			def = "(empty)"
		}
		want.WriteString("| `" + s.Name + "` | `--" + s.FlagName() + "` | " + def + " | " + s.Usage + " |\n")
	}
	if got := readme[start:end]; got != want.String() {
		if *update {
			if err := os.WriteFile(path, []byte(readme[:start]+want.String()+readme[end:]), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		t.Fatalf("the README's settings table differs from Settings(); run go test ./internal/config -run TestREADMETable -update\ngot:\n%s\nwant:\n%s", got, want.String())
	}
}
