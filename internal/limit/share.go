package limit

// This file holds the pure arithmetic of the shares: the rendezvous ranking,
// a replica's concurrency share, and the rate grid.

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fnv1a(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return h
}

// score is replica id's rendezvous weight for function. It depends on the
// two strings only, so every replica computes the same ranking.
func score(function, id string) uint64 {
	h := fnv1a(fnvOffset, function)
	h ^= 0xff // separator: no function/id split collides with another
	h *= fnvPrime
	h = fnv1a(h, id)
	// splitmix64 finaliser: FNV's high bits mix poorly on short inputs.
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}

// rank is self's place among members for function, 0 for the highest
// score; ties (vanishingly rare) go to the smaller id. It is -1 when self is
// not a member.
func rank(function, self string, members []string) int {
	mine := score(function, self)
	r, found := 0, false
	for _, m := range members {
		if m == self {
			found = true
			continue
		}
		if s := score(function, m); s > mine || (s == mine && m < self) {
			r++
		}
	}
	if !found {
		return -1
	}
	return r
}

// concurrencyShare is how many of c calls in flight the replica at rank r of
// n may hold: floor(c/n), plus one for the first c mod n ranks. The shares
// of ranks 0..n-1 add up to exactly c.
func concurrencyShare(c, n, r int) int {
	if c <= 0 || n <= 0 || r < 0 || r >= n {
		return 0
	}
	s := c / n
	if r < c%n {
		s++
	}
	return s
}

// gap is the distance between two slots of the rate grid of lim: Per/Rate
// rounded up to the nanosecond. Slot j of a function is at j*gap
// nanoseconds after the Unix epoch; since gap >= Per/Rate, a half-open window
// of length Per holds at most Rate slots.
func gap(lim Limits) int64 {
	p := lim.Per.Nanoseconds()
	return (p + int64(lim.Rate) - 1) / int64(lim.Rate)
}

// ownsSlot reports whether the replica at rank r of n owns slot j of a grid:
// the slots go round the ranking, so each replica owns Rate/n slots per Per
// (fractions allowed) and every slot has exactly one owner.
func ownsSlot(j int64, n, r int) bool {
	if n <= 0 || r < 0 {
		return false
	}
	return mod(j, int64(n)) == int64(r)
}

func mod(a, b int64) int64 { return ((a % b) + b) % b }

// ceilDiv and floorDiv divide times in nanoseconds (which may be negative
// after subtracting a horizon) by a positive gap.
func ceilDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a > 0 {
		q++
	}
	return q
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}
