package names

import (
	"strings"
	"testing"
)

func TestValid(t *testing.T) {
	label63 := strings.Repeat("a", 63)
	tests := []struct {
		name  string
		valid bool
	}{
		{"fn", true},
		{"fn.openfaas-fn", true},
		{"a", true},
		{"0", true},
		{"my-fn-2", true},
		{"9lives.dev", true},
		{label63, true},
		{label63 + "." + label63, true},

		{"", false},
		{".", false},
		{"fn.", false},
		{".dev", false},
		{"fn.dev.x", false},
		{"fn..dev", false},
		{label63 + "a", false},
		{"fn." + label63 + "a", false},
		{"Fn", false},
		{"fn.Dev", false},
		{"-fn", false},
		{"fn-", false},
		{"fn.-dev", false},
		{"fn_x", false},
		{"fn x", false},
		{" fn", false},
		{"fn/x", false},
		{"fn%2F", false},
		{"..", false},
		{"fné", false},
	}
	for _, tt := range tests {
		if got := Valid(tt.name); got != tt.valid {
			t.Errorf("Valid(%q) = %v, want %v", tt.name, got, tt.valid)
		}
	}
}

func TestValidLabel(t *testing.T) {
	tests := []struct {
		label string
		valid bool
	}{
		{"a", true},
		{"a-b", true},
		{"a--b", true},
		{strings.Repeat("z", 63), true},
		{"", false},
		{"a.b", false},
		{"-", false},
		{"A", false},
		{strings.Repeat("z", 64), false},
	}
	for _, tt := range tests {
		if got := ValidLabel(tt.label); got != tt.valid {
			t.Errorf("ValidLabel(%q) = %v, want %v", tt.label, got, tt.valid)
		}
	}
}

func TestQualify(t *testing.T) {
	for _, tt := range []struct{ in, ns, want string }{
		{"fn", DefaultNamespace, "fn.openfaas-fn"},
		{"fn", "dev", "fn.dev"},
		{"fn.dev", DefaultNamespace, "fn.dev"},
		{"fn.openfaas-fn", DefaultNamespace, "fn.openfaas-fn"},
	} {
		if got := Qualify(tt.in, tt.ns); got != tt.want {
			t.Errorf("Qualify(%q, %q) = %q, want %q", tt.in, tt.ns, got, tt.want)
		}
	}
}
