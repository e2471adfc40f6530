package storagebench

import (
	"math/bits"
	"time"
)

// histogram records durations in log-linear buckets: 16 sub-buckets per
// power of two, so a percentile is accurate to about 6%. It is not safe for
// concurrent use; each writer keeps its own and they are merged.
type histogram struct {
	counts [64 * subBuckets]uint64
	n      uint64
}

const subBits = 4
const subBuckets = 1 << subBits

func bucketOf(ns uint64) int {
	if ns < subBuckets {
		return int(ns)
	}
	exp := bits.Len64(ns) - 1 // ns is in [2^exp, 2^(exp+1))
	sub := (ns >> (exp - subBits)) & (subBuckets - 1)
	return (exp-subBits+1)*subBuckets + int(sub)
}

// bucketLow returns the smallest value that falls in bucket b.
func bucketLow(b int) uint64 {
	if b < subBuckets {
		return uint64(b)
	}
	exp := b/subBuckets + subBits - 1
	sub := uint64(b % subBuckets)
	return 1<<exp | sub<<(exp-subBits)
}

func (h *histogram) record(d time.Duration) {
	h.counts[bucketOf(uint64(max(d, 0)))]++
	h.n++
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
}

// quantile returns the lower bound of the bucket holding quantile q.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	target := uint64(q*float64(h.n-1)) + 1
	var seen uint64
	for b, c := range h.counts {
		if seen += c; seen >= target {
			return time.Duration(bucketLow(b))
		}
	}
	return 0
}
