package broker

import (
	"testing"
	"time"

	"github.com/walrus-edge/walrus/cluster"
)

// firstKept deletes only the leading run of sealed segments, as far as the
// strictest limit asks.
func TestRetention_FirstKept(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	ago := func(d time.Duration) int64 { return now.Add(-d).UnixNano() }
	sealed := func(id uint64, bytes int64, at int64) cluster.Segment {
		return cluster.Segment{ID: id, State: cluster.SegmentSealed, Bytes: bytes, SealedAt: at}
	}
	open := func(id uint64) cluster.Segment { return cluster.Segment{ID: id, State: cluster.SegmentOpen} }
	pending := func(id uint64) cluster.Segment { return cluster.Segment{ID: id, State: cluster.SegmentPending} }
	five := []cluster.Segment{ // 4 sealed, 100 bytes each, sealed 4h, 3h, 2h, 1h ago
		sealed(3, 100, ago(4*time.Hour)), sealed(4, 100, ago(3*time.Hour)),
		sealed(5, 100, ago(2*time.Hour)), sealed(6, 100, ago(time.Hour)), open(7),
	}
	for _, tc := range []struct {
		name     string
		r        Retention
		segs     []cluster.Segment
		keep     uint64
		why      string
		blocked  uint64
		disabled bool
	}{
		{name: "no limits", segs: five, keep: 3, disabled: true},
		{name: "within every limit", r: Retention{MaxAge: 5 * time.Hour, MaxBytes: 400, MaxSegments: 4}, segs: five, keep: 3},
		{name: "segments", r: Retention{MaxSegments: 1}, segs: five, keep: 6, why: "max segments"},
		{name: "no sealed segment kept", r: Retention{MaxBytes: 50}, segs: five, keep: 7, why: "max bytes"},
		{name: "bytes", r: Retention{MaxBytes: 250}, segs: five, keep: 5, why: "max bytes"},
		{name: "age", r: Retention{MaxAge: 150 * time.Minute}, segs: five, keep: 5, why: "max age"},
		{name: "the strictest wins", r: Retention{MaxAge: 150 * time.Minute, MaxSegments: 3, MaxBytes: 350}, segs: five, keep: 5, why: "max age"},
		{name: "unknown age goes with a later expired one",
			r:    Retention{MaxAge: time.Hour},
			segs: []cluster.Segment{sealed(1, 0, 0), sealed(2, 0, ago(2*time.Hour)), sealed(3, 0, 0), open(4)},
			keep: 3, why: "max age"},
		{name: "never past a pending segment",
			r:    Retention{MaxSegments: 1},
			segs: []cluster.Segment{sealed(1, 10, 1), pending(2), sealed(3, 10, 1), sealed(4, 10, 1), open(5)},
			keep: 2, why: "max segments", blocked: 2},
		{name: "a pending first segment stops everything",
			r:    Retention{MaxAge: time.Nanosecond, MaxBytes: 1, MaxSegments: 1},
			segs: []cluster.Segment{pending(1), sealed(2, 10, 1), sealed(3, 10, 1), open(4)},
			keep: 1, blocked: 1},
		{name: "a pending segment the limits do not reach",
			r:    Retention{MaxSegments: 2},
			segs: []cluster.Segment{sealed(1, 10, 1), sealed(2, 10, 1), pending(3), sealed(4, 10, 1), open(5)},
			keep: 2, why: "max segments"},
		{name: "age past a pending segment",
			r:    Retention{MaxAge: time.Minute},
			segs: []cluster.Segment{sealed(1, 10, 1), pending(2), sealed(3, 10, ago(time.Hour)), open(4)},
			keep: 2, why: "max age", blocked: 2},
		{name: "only an open segment", r: Retention{MaxSegments: 1, MaxBytes: 1, MaxAge: time.Nanosecond}, segs: []cluster.Segment{open(9)}, keep: 9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.r.enabled() == tc.disabled {
				t.Fatalf("enabled() = %v", tc.r.enabled())
			}
			keep, why, blocked := tc.r.firstKept(&cluster.Topic{Name: "t", Segments: tc.segs}, now)
			if keep != tc.keep || why != tc.why || blocked != tc.blocked {
				t.Fatalf("firstKept = %d (%q, blocked by %d), want %d (%q, blocked by %d)", keep, why, blocked, tc.keep, tc.why, tc.blocked)
			}
		})
	}
}
