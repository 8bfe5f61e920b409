package names

import "testing"

func TestBounded(t *testing.T) {
	b := NewBounded(2)
	for _, tt := range []struct{ name, want string }{
		{"a", "a"}, {"b", "b"}, {"a", "a"}, {"c", Other}, {"b", "b"}, {"d", Other},
	} {
		if got := b.Label(tt.name); got != tt.want {
			t.Errorf("Label(%q) = %q, want %q", tt.name, got, tt.want)
		}
	}
}
