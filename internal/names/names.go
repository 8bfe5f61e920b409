// Package names checks function names as the mailbox accepts them: the
// form Kubernetes requires of function and namespace names, which the
// gateway's /function/<name> and /function/<name>.<namespace> paths use.
package names

import "strings"

// MaxLabelLen is the longest DNS-1123 label.
const MaxLabelLen = 63

// DefaultNamespace is where faas-netes and faasd put a function named
// without a namespace.
const DefaultNamespace = "openfaas-fn"

// Valid reports whether s names a function: "name" or "name.namespace",
// each part a DNS-1123 label.
func Valid(s string) bool {
	name, namespace, dotted := strings.Cut(s, ".")
	if !dotted {
		return ValidLabel(name)
	}
	return ValidLabel(name) && ValidLabel(namespace)
}

// ValidLabel reports whether s is a DNS-1123 label: 1 to 63 lowercase
// letters, digits and '-', starting and ending with a letter or digit.
func ValidLabel(s string) bool {
	if len(s) == 0 || len(s) > MaxLabelLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}

// Qualify returns "name.namespace" for a function name, adding
// defaultNamespace to a name without one: "fn" and "fn.openfaas-fn" are
// the same function when defaultNamespace is "openfaas-fn".
func Qualify(s, defaultNamespace string) string {
	if strings.Contains(s, ".") {
		return s
	}
	return s + "." + defaultNamespace
}
