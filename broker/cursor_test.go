package broker_test

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/walrus-edge/walrus/bridge"
	"github.com/walrus-edge/walrus/broker"
	"github.com/walrus-edge/walrus/storage"
)

// TestCursorExactlyOnce is the core property of the shared cursor: GETs
// racing through every node deliver each entry exactly once overall. Six
// goroutines, two per node, drain 300 entries spread over six segments (so
// the races also cross segment boundaries, where the cursor skips ahead).
func TestCursorExactlyOnce(t *testing.T) {
	const total, perSegment, batch = 300, 50, 10
	c := newCluster(t, 3, func(cfg *broker.Config) { cfg.MaxSegmentEntries = perSegment })
	ctx := testCtx(t, 60*time.Second)
	const topic = "shared"
	if err := c.srv(1).Register(ctx, topic); err != nil {
		t.Fatal(err)
	}
	want := seq("e", total)
	for i := 0; i < total; i += batch {
		recs := make([]storage.Record, batch)
		for j := range recs {
			recs[j] = storage.Record{Value: []byte(want[i+j])}
		}
		if _, err := c.srv(uint64(1+(i/batch)%3)).Put(ctx, topic, recs); err != nil {
			t.Fatalf("Put batch at %d: %v", i, err)
		}
	}
	waitFor(t, 10*time.Second, func() error {
		if st := stateOf(t, c.srv(1), topic); len(st.SealedSegments) != total/perSegment {
			return fmt.Errorf("sealed segments %v", st.SealedSegments)
		}
		return nil
	})

	type got struct {
		offset uint64
		value  string
		node   uint64
	}
	var (
		mu    sync.Mutex
		all   []got
		wg    sync.WaitGroup
		start = make(chan struct{})
	)
	for g := range 6 {
		s := c.srv(uint64(1 + g%3))
		wg.Go(func() {
			<-start
			var mine []got
			defer func() {
				mu.Lock()
				all = append(all, mine...)
				mu.Unlock()
			}()
			for len(mine) <= total {
				e, ok, err := s.Get(ctx, topic)
				if err != nil {
					t.Errorf("goroutine %d (node %d): Get after %d entries: %v", g, s.NodeID(), len(mine), err)
					return
				}
				if !ok {
					return
				}
				mine = append(mine, got{offset: e.Offset, value: string(e.Value), node: s.NodeID()})
			}
		})
	}
	began := time.Now()
	close(start)
	wg.Wait()
	t.Logf("6 goroutines drained %d entries in %v", len(all), time.Since(began).Round(time.Millisecond))

	seen := map[string]uint64{}
	perNode := map[uint64]int{}
	for _, g := range all {
		if n, dup := seen[g.value]; dup {
			t.Errorf("%s delivered twice (nodes %d and %d)", g.value, n, g.node)
		}
		seen[g.value] = g.node
		perNode[g.node]++
	}
	for _, v := range want {
		if _, ok := seen[v]; !ok {
			t.Errorf("%s never delivered", v)
		}
	}
	slices.SortFunc(all, func(a, b got) int { return int(a.offset) - int(b.offset) })
	values := make([]string, len(all))
	for i, g := range all {
		values[i] = g.value
		if g.offset != uint64(i) {
			t.Fatalf("entry %d has offset %d", i, g.offset)
		}
	}
	equalSeq(t, "union of the GETs by offset", values, want)
	t.Logf("delivered per node: %v", perNode)
	if st := stateOf(t, c.raftLeader().srv, topic); st.Cursor != total {
		t.Fatalf("cursor %d after draining %d entries", st.Cursor, total)
	}
}

// TestCursorHint: a GET through one node followed at once by a GET through
// another, whose metadata may not have applied the first move yet, returns
// the next entry, never the same one again.
func TestCursorHint(t *testing.T) {
	const n = 30
	c := newCluster(t, 3, nil)
	ctx := testCtx(t, 30*time.Second)
	const topic = "hint"
	if err := c.srv(1).Register(ctx, topic); err != nil {
		t.Fatal(err)
	}
	want := seq("h", n)
	putAll(t, ctx, c.srv(1), topic, want)

	// Node 2 then node 3 (the brief's case), then a fixed mix with repeats
	// on one node (its own hint) and switches (another node's hint).
	order := []uint64{2, 3, 3, 1, 2, 2, 3, 1, 1, 2}
	for i, v := range want {
		s := c.srv(order[i%len(order)])
		e, ok, err := s.Get(ctx, topic)
		if err != nil || !ok {
			t.Fatalf("GET %d through node %d = %v, %v", i, s.NodeID(), ok, err)
		}
		if string(e.Value) != v || e.Offset != uint64(i) {
			t.Fatalf("GET %d through node %d returned %q at offset %d, want %q", i, s.NodeID(), e.Value, e.Offset, v)
		}
	}
	for id := uint64(1); id <= 3; id++ {
		if _, ok, err := c.srv(id).Get(ctx, topic); err != nil || ok {
			t.Fatalf("GET through node %d after draining = %v, %v; want EMPTY", id, ok, err)
		}
	}
}

// TestProduceConsumeConcurrently: producers on every node write across
// many rollovers (7 entries per segment) while consumers on every node GET
// at the same time, so GETs meet segments that are being sealed and rolled
// over. Every acknowledged write is delivered exactly once, and each
// producer's writes are delivered in its order.
func TestProduceConsumeConcurrently(t *testing.T) {
	const producers, perProducer = 6, 40
	c := newCluster(t, 3, func(cfg *broker.Config) { cfg.MaxSegmentEntries = 7 })
	ctx := testCtx(t, 60*time.Second)
	const topic = "busy"
	if err := c.srv(3).Register(ctx, topic); err != nil {
		t.Fatal(err)
	}

	var (
		mu        sync.Mutex
		acked     = map[int][]string{}
		delivered []bridge.Entry
		prodWG    sync.WaitGroup
		consWG    sync.WaitGroup
		done      = make(chan struct{})
	)
	for p := range producers {
		s := c.srv(uint64(1 + p%3))
		prodWG.Go(func() {
			for i := range perProducer {
				v := fmt.Sprintf("p%d-%03d", p, i)
				if _, err := s.Put(ctx, topic, []storage.Record{{Value: []byte(v)}}); err != nil {
					t.Errorf("producer %d (node %d): Put %s: %v", p, s.NodeID(), v, err)
					return
				}
				mu.Lock()
				acked[p] = append(acked[p], v)
				mu.Unlock()
			}
		})
	}
	for g := range 3 {
		s := c.srv(uint64(1 + g))
		consWG.Go(func() {
			for {
				e, ok, err := s.Get(ctx, topic)
				if err != nil {
					t.Errorf("consumer on node %d: Get: %v", s.NodeID(), err)
					return
				}
				if ok {
					mu.Lock()
					delivered = append(delivered, e)
					mu.Unlock()
					continue
				}
				select {
				case <-done:
					return
				case <-time.After(5 * time.Millisecond):
				}
			}
		})
	}
	prodWG.Wait()
	close(done) // consumers stop at the next EMPTY: everything written is read
	consWG.Wait()
	if t.Failed() {
		t.FailNow()
	}

	st := stateOf(t, c.raftLeader().srv, topic)
	t.Logf("%d entries delivered, %d sealed segments, cursor %d: %+v", len(delivered), len(st.SealedSegments), st.Cursor, st)
	// Three consumers append to delivered concurrently, so its order is not
	// the cursor's: put it back in topic order.
	slices.SortFunc(delivered, func(a, b bridge.Entry) int { return cmp.Compare(a.Offset, b.Offset) })
	count := map[string]int{}
	for _, e := range delivered {
		v := string(e.Value)
		count[v]++
		if count[v] == 2 {
			t.Errorf("%s delivered twice", v)
		}
	}
	for p := range producers {
		var mine []string
		for _, e := range delivered {
			v := string(e.Value)
			if v[:len(fmt.Sprintf("p%d-", p))] == fmt.Sprintf("p%d-", p) {
				mine = append(mine, v)
			}
		}
		equalSeq(t, fmt.Sprintf("producer %d", p), mine, acked[p])
	}
}
