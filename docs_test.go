// Package mailbox_test checks that the reference in docs/ stays true to the
// code it names.
package mailbox_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestSecurityDocNamesRealTests: every test, fuzz target, suite case or
// subtest that docs/security.md cites as covering an attack exists, so a
// renamed or deleted test cannot leave a claim without its proof.
func TestSecurityDocNamesRealTests(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("docs", "security.md"))
	if err != nil {
		t.Fatal(err)
	}
	var code strings.Builder
	err = filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && strings.HasPrefix(d.Name(), ".") && path != "." {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(path, ".go") {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			code.Write(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	src := code.String()

	// `TestX`, `TestX/sub`, `FuzzX` and the CamelCase names of suite cases
	// and bed subtests, in backquotes on table rows.
	name := regexp.MustCompile("`((?:Test|Fuzz)[A-Za-z0-9_]+(?:/[A-Za-z0-9_]+)?|[A-Z][a-z]+(?:[A-Z][A-Za-z0-9]*)+)`")
	cited := 0
	for line := range strings.SplitSeq(string(doc), "\n") {
		if !strings.HasPrefix(line, "|") {
			continue
		}
		for _, m := range name.FindAllStringSubmatch(line, -1) {
			top, sub, _ := strings.Cut(m[1], "/")
			cited++
			if strings.HasPrefix(top, "Test") || strings.HasPrefix(top, "Fuzz") {
				if !strings.Contains(src, "func "+top+"(") {
					t.Errorf("docs/security.md cites %s: no func %s in the repository", m[1], top)
				}
				if sub != "" && !strings.Contains(src, `"`+sub+`"`) {
					t.Errorf("docs/security.md cites %s: no subtest %q in the repository", m[1], sub)
				}
				continue
			}
			if !strings.Contains(src, `"`+top+`"`) {
				t.Errorf("docs/security.md cites %s: no suite case or subtest of that name in the repository", top)
			}
		}
	}
	if cited < 50 {
		t.Fatalf("docs/security.md cites %d tests; the pattern no longer reads its tables", cited)
	}
}
