package tests

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walrus-edge/walrus/tests/testcluster"
)

// segmentFileIDs lists the ids of topic's segment files in node n's data
// directory.
func segmentFileIDs(t *testing.T, n *testcluster.Node, topic string) []uint64 {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(n.DataDir, "node_*", "storage", "topics", topic, "*.log"))
	if err != nil {
		t.Fatal(err)
	}
	var ids []uint64
	for _, f := range files {
		id, err := strconv.ParseUint(strings.TrimSuffix(filepath.Base(f), ".log"), 10, 64)
		if err != nil {
			t.Fatalf("segment file %s: %v", f, err)
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Retention across real processes: the oldest sealed segments are deleted
// while a node is down; the node deletes its own copies once it is back,
// and readers through any node go on from the first entry kept.
func TestScenario_Retention(t *testing.T) {
	const perSegment, keep = 5, 2
	c := testcluster.New(t, testcluster.Options{
		MaxSegmentEntries: perSegment,
		Args:              []string{"--retention-max-segments", strconv.Itoa(keep)},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	const topic = "retained"
	w := c.Client(1)
	if err := w.Register(ctx, topic); err != nil {
		t.Fatal(err)
	}
	values := seq("r-", 8*perSegment)
	put := func(vs []string) {
		t.Helper()
		for _, v := range vs {
			if err := w.Put(ctx, topic, []byte(v)); err != nil {
				t.Fatalf("PUT %s: %v", v, err)
			}
		}
	}
	put(values[:3*perSegment]) // segments 1-3: rollovers go round robin, so one is node 3's
	waitUntil(t, "a segment file on node 3", 20*time.Second, func() error {
		if ids := segmentFileIDs(t, c.Node(3), topic); len(ids) == 0 {
			return fmt.Errorf("node 3 has no segment files yet")
		}
		return nil
	})
	held := segmentFileIDs(t, c.Node(3), topic)
	if !slices.ContainsFunc(held, func(id uint64) bool { return id < 7 }) {
		t.Fatalf("node 3 holds segments %v: none that retention will delete", held)
	}

	// Node 3 is down while the next segments fill and retention trims.
	c.Stop(3)
	put(values[3*perSegment:])
	var st state
	waitUntil(t, "retention while node 3 is down", 20*time.Second, func() error {
		st = topicState(t, ctx, w, topic)
		if len(st.SealedSegments) != keep || st.CurrentSegment != 9 {
			return fmt.Errorf("STATE %+v: want segment 9 open and %d sealed", st, keep)
		}
		return nil
	})
	first := uint64(len(values) - keep*perSegment)
	if st.FirstOffset != first || st.LastSealedEntryOffset != uint64(len(values)) {
		t.Fatalf("STATE %+v: want first_offset %d and last_sealed_entry_offset %d", st, first, len(values))
	}
	if ids := segmentFileIDs(t, c.Node(3), topic); !slices.Equal(ids, held) {
		t.Fatalf("node 3's files changed while it was down: %v, had %v", ids, held)
	}

	// Back up, node 3 deletes its copies of the trimmed segments.
	c.Start(3)
	c.WaitReady(60 * time.Second)
	waitUntil(t, "trimmed segment files deleted", 20*time.Second, func() error {
		for _, n := range c.Nodes {
			if ids := segmentFileIDs(t, n, topic); slices.ContainsFunc(ids, func(id uint64) bool { return id < 7 }) {
				return fmt.Errorf("node %d still has segment files %v", n.ID, ids)
			}
		}
		return nil
	})

	// Readers through the restarted node start at the first entry kept.
	r := c.Client(3)
	if _, _, _, err := r.Fetch(ctx, topic, 1, 0); err == nil || !strings.Contains(err.Error(), "deleted by retention") {
		t.Fatalf("FETCH %s 1 0: %v, want ERR deleted by retention", topic, err)
	}
	equal(t, "GET after retention", drain(t, ctx, r, topic, 100), values[first:])
}
