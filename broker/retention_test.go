package broker_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walrus-edge/walrus/broker"
)

// segmentFiles lists the ids of topic's segment files on every node of c.
func segmentFiles(t *testing.T, c *cluster, topic string) map[uint64][]uint64 {
	t.Helper()
	out := map[uint64][]uint64{}
	for _, n := range c.nodes {
		files, err := filepath.Glob(filepath.Join(n.cfg.DataDir, "node_*", "storage", "topics", topic, "*.log"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			id, err := strconv.ParseUint(strings.TrimSuffix(filepath.Base(f), ".log"), 10, 64)
			if err != nil {
				t.Fatalf("segment file %s: %v", f, err)
			}
			out[n.id] = append(out[n.id], id)
		}
	}
	return out
}

// Retention by segment count on a 3-node cluster: the oldest sealed
// segments leave the metadata and every node's disk; GET, FETCH and the
// NATS fetch go on from the first entry kept; STATE's sealed entry count
// does not go back.
func TestRetention_MaxSegments(t *testing.T) {
	const perSegment, keep = 5, 2
	c := newCluster(t, 3, func(cfg *broker.Config) {
		cfg.MaxSegmentEntries = perSegment
		cfg.Retention = broker.Retention{MaxSegments: keep}
	})
	ctx := testCtx(t, 60*time.Second)
	s := c.srv(1)
	if err := s.Register(ctx, "ret"); err != nil {
		t.Fatal(err)
	}
	values := seq("v", 8*perSegment)
	putAll(t, ctx, s, "ret", values)

	// Segments 1-8 fill up and roll over; only the last two sealed stay.
	var st topicState
	waitFor(t, 20*time.Second, func() error {
		st = stateOf(t, s, "ret")
		if st.CurrentSegment != 9 || len(st.SealedSegments) != keep || st.SealedSegments["7"] != perSegment {
			return fmt.Errorf("STATE %+v: want segment 9 open and only 7 and 8 sealed", st)
		}
		return nil
	})
	if st.LastSealedEntryOffset != uint64(len(values)) {
		t.Fatalf("last_sealed_entry_offset %d after retention, want %d", st.LastSealedEntryOffset, len(values))
	}
	first := uint64(6 * perSegment)
	raw, err := s.State("ret")
	if err != nil || !strings.Contains(string(raw), fmt.Sprintf(`"first_offset":%d`, first)) {
		t.Fatalf("STATE %s (%v): want first_offset %d", raw, err, first)
	}
	// Every node deletes its files of segments 1-6, and keeps the others.
	waitFor(t, 20*time.Second, func() error {
		files := segmentFiles(t, c, "ret")
		var all []uint64
		for node, ids := range files {
			if slices.ContainsFunc(ids, func(id uint64) bool { return id < 7 }) {
				return fmt.Errorf("node %d still has segment files %v", node, ids)
			}
			all = append(all, ids...)
		}
		slices.Sort(all)
		if !slices.Equal(all, []uint64{7, 8}) {
			return fmt.Errorf("segment files %v, want 7 and 8 (9 is empty)", files)
		}
		return nil
	})

	// The shared cursor moved to the first entry kept.
	for _, n := range c.nodes {
		if cur := stateOf(t, n.srv, "ret").Cursor; cur != first {
			t.Fatalf("node %d: cursor %d, want %d", n.id, cur, first)
		}
	}
	e, ok, err := c.srv(2).Get(ctx, "ret")
	if err != nil || !ok || string(e.Value) != values[first] || e.Offset != first {
		t.Fatalf("GET after retention: %q at %d, %v, %v; want %q at %d", e.Value, e.Offset, ok, err, values[first], first)
	}
	// FETCH of a deleted segment says so; a kept one reads.
	if _, _, err := c.srv(3).Fetch(ctx, "ret", 3, 0); !errors.Is(err, broker.ErrTrimmed) {
		t.Fatalf("FETCH of deleted segment 3: %v, want ErrTrimmed", err)
	}
	if e, ok, err := c.srv(3).Fetch(ctx, "ret", 8, 4); err != nil || !ok || string(e.Value) != values[len(values)-1] {
		t.Fatalf("FETCH ret 8 4: %q, %v, %v; want %q", e.Value, ok, err, values[len(values)-1])
	}
	// A NATS fetch from a deleted offset starts at the first one kept.
	f := decodeReply[natsFetch](t, request(t, natsClient(t, c.srv(3)), "walrus.fetch.ret", `{"offset":3,"max":100}`))
	if !slices.Equal(f.values(), values[first:]) || f.Entries[0].Offset != first || f.NextOffset != uint64(len(values)) {
		t.Fatalf("fetch from offset 3: %v, next %d; want %v from offset %d, next %d",
			f.values(), f.NextOffset, values[first:], first, len(values))
	}
}

// Retention by age: sealed segments go once they are older than the limit;
// the open segment stays, however old its entries.
func TestRetention_MaxAge(t *testing.T) {
	c := newCluster(t, 1, func(cfg *broker.Config) {
		cfg.MaxSegmentEntries = 3
		cfg.Retention = broker.Retention{MaxAge: 500 * time.Millisecond}
	})
	ctx := testCtx(t, 60*time.Second)
	s := c.srv(1)
	if err := s.Register(ctx, "aged"); err != nil {
		t.Fatal(err)
	}
	values := seq("a", 7) // segments 1 and 2 full, 1 entry in segment 3
	putAll(t, ctx, s, "aged", values)
	waitFor(t, 20*time.Second, func() error {
		st := stateOf(t, s, "aged")
		if len(st.SealedSegments) != 0 || st.CurrentSegment != 3 {
			return fmt.Errorf("STATE %+v: want segments 1 and 2 deleted", st)
		}
		if files := segmentFiles(t, c, "aged"); !slices.Equal(files[1], []uint64{3}) {
			return fmt.Errorf("segment files %v, want only 3", files)
		}
		return nil
	})
	got := drain(t, ctx, s, "aged", 10)
	equalSeq(t, "drained after retention", got, values[6:])
}

// An append that judged a segment open on metadata from before the segment
// was sealed, trimmed and its files deleted does not create it again:
// that would store an entry nobody can read, at an offset already used.
func TestRetention_TrimmedSegmentIsNotRecreated(t *testing.T) {
	c := newCluster(t, 1, func(cfg *broker.Config) {
		cfg.MaxSegmentEntries = 2
		cfg.Retention = broker.Retention{MaxSegments: 1}
	})
	ctx := testCtx(t, 60*time.Second)
	s := c.srv(1)
	if err := s.Register(ctx, "stale"); err != nil {
		t.Fatal(err)
	}
	stale := broker.OpenSegment(s, "stale") // segment 1, as an append saw it
	putAll(t, ctx, s, "stale", seq("s", 6)) // segments 1-3 sealed, 4 open; 1 and 2 trimmed
	waitFor(t, 20*time.Second, func() error {
		if broker.HasSegment(s, "stale", 1) {
			return errors.New("segment 1 is still in storage")
		}
		return nil
	})
	if err := broker.EnsureSegment(s, "stale", stale); !errors.Is(err, broker.ErrRollingOver) {
		t.Fatalf("creating trimmed segment 1 again: %v, want ErrRollingOver", err)
	}
	if broker.HasSegment(s, "stale", 1) {
		t.Fatal("segment 1 was created again")
	}
}
