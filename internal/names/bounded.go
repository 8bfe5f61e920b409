package names

import "sync"

// Other is the label of every function name past a Bounded's limit.
const Other = "other"

// MaxLabels is how many distinct function names a process labels its
// metrics with.
const MaxLabels = 500

// Bounded hands out metric label values for function names: the first max
// distinct names as they are, any further one as Other. Callers choose the
// names they requeue to, so without a bound they could grow a process's
// metrics without end.
type Bounded struct {
	max  int
	mu   sync.Mutex
	seen map[string]struct{}
}

// NewBounded returns a Bounded that keeps max names.
func NewBounded(max int) *Bounded {
	return &Bounded{max: max, seen: map[string]struct{}{}}
}

// Label is the label value for function name.
func (b *Bounded) Label(name string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.seen[name]; ok {
		return name
	}
	if len(b.seen) >= b.max {
		return Other
	}
	b.seen[name] = struct{}{}
	return name
}
