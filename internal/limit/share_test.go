package limit

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestConcurrencyShare(t *testing.T) {
	t.Parallel()
	tests := []struct {
		c, n int
		want []int // by rank
	}{
		{0, 3, []int{0, 0, 0}},
		{1, 1, []int{1}},
		{1, 3, []int{1, 0, 0}},
		{2, 3, []int{1, 1, 0}},
		{3, 3, []int{1, 1, 1}},
		{5, 3, []int{2, 2, 1}},
		{10, 3, []int{4, 3, 3}},
		{10, 4, []int{3, 3, 2, 2}},
		{11, 5, []int{3, 2, 2, 2, 2}},
		{7, 2, []int{4, 3}},
	}
	for _, tt := range tests {
		var got []int
		for r := range tt.n {
			got = append(got, concurrencyShare(tt.c, tt.n, r))
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("C=%d n=%d: shares %v, want %v", tt.c, tt.n, got, tt.want)
		}
	}
	if got := concurrencyShare(5, 3, 3); got != 0 {
		t.Errorf("rank outside the view: share %d, want 0", got)
	}
	if got := concurrencyShare(5, 3, -1); got != 0 {
		t.Errorf("not a member: share %d, want 0", got)
	}
	// Every C and n: the shares add up to C, differ by at most one, and a
	// replica joining never raises another's share.
	for c := range 40 {
		for n := 1; n <= 8; n++ {
			sum, lo, hi := 0, c, 0
			for r := range n {
				s := concurrencyShare(c, n, r)
				sum += s
				lo, hi = min(lo, s), max(hi, s)
				for _, r2 := range []int{r, r + 1} { // its rank among n+1
					if s2 := concurrencyShare(c, n+1, r2); s2 > s {
						t.Errorf("C=%d: rank %d of %d has %d, rank %d of %d has more (%d)", c, r, n, s, r2, n+1, s2)
					}
				}
			}
			if sum != c || hi-lo > 1 {
				t.Errorf("C=%d n=%d: sum %d (min %d, max %d), want %d", c, n, sum, lo, hi, c)
			}
		}
	}
}

func TestRateGrid(t *testing.T) {
	t.Parallel()
	for _, lim := range []Limits{
		{Rate: 1, Per: time.Second},
		{Rate: 3, Per: time.Second}, // 333,333,333.3 ns: rounded up
		{Rate: 20, Per: time.Second},
		{Rate: 600, Per: time.Minute},
		{Rate: 7, Per: 100 * time.Millisecond},
		{Rate: 1000, Per: time.Hour},
	} {
		g := gap(lim)
		if g*int64(lim.Rate) < lim.Per.Nanoseconds() {
			t.Errorf("%+v: gap %d ns makes %d per %v", lim, g, lim.Rate+1, lim.Per)
		}
		// Any half-open window of length Per holds at most Rate slots.
		for range 1000 {
			start := rand.Int64N(1 << 62)
			first := ceilDiv(start, g)
			last := ceilDiv(start+lim.Per.Nanoseconds(), g) - 1 // < start+Per
			if n := last - first + 1; n > int64(lim.Rate) {
				t.Fatalf("%+v: %d slots in [%d, +%v)", lim, n, start, lim.Per)
			}
		}
		// With n replicas each slot has one owner, and each owns Rate/n
		// slots per Rate consecutive slots, rounded down or up.
		for n := 1; n <= 5; n++ {
			j0 := rand.Int64N(1 << 40)
			per := make([]int, n)
			for j := j0; j < j0+int64(lim.Rate); j++ {
				owners := 0
				for r := range n {
					if ownsSlot(j, n, r) {
						owners++
						per[r]++
					}
				}
				if owners != 1 {
					t.Fatalf("%+v n=%d: slot %d has %d owners", lim, n, j, owners)
				}
			}
			for r, c := range per {
				if c != lim.Rate/n && c != (lim.Rate+n-1)/n {
					t.Errorf("%+v n=%d: rank %d owns %d of %d slots", lim, n, r, c, lim.Rate)
				}
			}
		}
	}
}

func TestDivision(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ a, b, floor, ceil int64 }{
		{10, 5, 2, 2}, {11, 5, 2, 3}, {-11, 5, -3, -2}, {-10, 5, -2, -2}, {0, 5, 0, 0}, {-1, 5, -1, 0},
	} {
		if got := floorDiv(tt.a, tt.b); got != tt.floor {
			t.Errorf("floorDiv(%d, %d) = %d, want %d", tt.a, tt.b, got, tt.floor)
		}
		if got := ceilDiv(tt.a, tt.b); got != tt.ceil {
			t.Errorf("ceilDiv(%d, %d) = %d, want %d", tt.a, tt.b, got, tt.ceil)
		}
	}
}

func TestRank(t *testing.T) {
	t.Parallel()
	members := []string{"a", "b", "c", "d", "e"}
	top := map[string]int{}
	for f := range 1000 {
		function := fmt.Sprintf("fn-%d", f)
		var ranks []int
		for _, m := range members {
			r := rank(function, m, members)
			ranks = append(ranks, r)
			if r == 0 {
				top[m]++
			}
			// Same answer whatever the order of the members.
			if r2 := rank(function, m, []string{"e", "d", "c", "b", "a"}); r2 != r {
				t.Fatalf("%s: rank of %s depends on the order: %d, %d", function, m, r, r2)
			}
		}
		slices.Sort(ranks)
		if !slices.Equal(ranks, []int{0, 1, 2, 3, 4}) {
			t.Fatalf("%s: ranks %v are not a permutation", function, ranks)
		}
	}
	for _, m := range members {
		if top[m] < 120 { // 200 expected
			t.Errorf("%s ranks first for %d of 1000 functions: %v", m, top[m], top)
		}
	}
	if got := rank("f", "x", members); got != -1 {
		t.Errorf("rank of a non-member = %d, want -1", got)
	}
}
