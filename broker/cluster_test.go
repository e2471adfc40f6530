package broker_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/walrus-edge/walrus/broker"
)

// TestThreeNodes: any node accepts any command (forwarding), and rollover
// rotates segment leaders round robin; a node that leads none of the
// segments reads them all back in order.
func TestThreeNodes(t *testing.T) {
	c := newCluster(t, 3, func(cfg *broker.Config) { cfg.MaxSegmentEntries = 5 })
	ctx := testCtx(t, 60*time.Second)

	t.Run("forwarding", func(t *testing.T) {
		// Each topic is created through node 2 and used at once through
		// nodes 3 and 1, whose metadata may not know it yet.
		for i := range 5 {
			topic := fmt.Sprintf("fwd-%d", i)
			if err := c.srv(2).Register(ctx, topic); err != nil {
				t.Fatal(err)
			}
			if _, err := c.srv(3).Put(ctx, topic, rec("x-"+topic)); err != nil {
				t.Fatalf("Put through node 3 right after Register through node 2: %v", err)
			}
			e, ok, err := c.srv(1).Get(ctx, topic)
			if err != nil || !ok || string(e.Value) != "x-"+topic {
				t.Fatalf("Get through node 1 = %q, %v, %v", e.Value, ok, err)
			}
		}
	})

	t.Run("rollover", func(t *testing.T) {
		const topic, total = "roll", 40
		if err := c.srv(1).Register(ctx, topic); err != nil {
			t.Fatal(err)
		}
		want := seq("r", total)
		for i, v := range want {
			if _, err := c.srv(uint64(1+i%3)).Put(ctx, topic, rec(v)); err != nil {
				t.Fatalf("Put %s: %v", v, err)
			}
		}
		// Every node's metadata converges on 8 sealed segments of 5.
		var st topicState
		for _, n := range c.nodes {
			waitFor(t, 10*time.Second, func() error {
				st = stateOf(t, n.srv, topic)
				if len(st.SealedSegments) < 8 || st.CurrentSegment != 9 {
					return fmt.Errorf("node %d: %d sealed segments, current %d", n.id, len(st.SealedSegments), st.CurrentSegment)
				}
				return nil
			})
		}
		for id := 1; id <= 8; id++ {
			if cnt := st.SealedSegments[strconv.Itoa(id)]; cnt != 5 {
				t.Fatalf("segment %d sealed with %d entries, want 5: %+v", id, cnt, st)
			}
		}
		if st.LastSealedEntryOffset != total {
			t.Fatalf("last_sealed_entry_offset %d, want %d", st.LastSealedEntryOffset, total)
		}
		for id := 1; id < 9; id++ {
			cur, next := st.SegmentLeaders[strconv.Itoa(id)], st.SegmentLeaders[strconv.Itoa(id+1)]
			if cur < 1 || cur > 3 || next != cur%3+1 {
				t.Fatalf("segment leaders are not round robin over nodes 1-3: %v", st.SegmentLeaders)
			}
		}

		// Node 4 joins after the writes: it leads none of the segments, so
		// every read it serves is forwarded.
		n4 := c.add()
		c.waitMembers(4)
		s4 := n4.srv
		for seg := uint64(1); seg <= 8; seg++ {
			for idx := range uint64(5) {
				e, ok, err := s4.Fetch(ctx, topic, seg, idx)
				if w := want[(seg-1)*5+idx]; err != nil || !ok || string(e.Value) != w {
					t.Fatalf("node 4: Fetch(%d, %d) = %q, %v, %v; want %q", seg, idx, e.Value, ok, err, w)
				}
			}
			if _, ok, err := s4.Fetch(ctx, topic, seg, 5); err != nil || ok {
				t.Fatalf("node 4: Fetch(%d, 5) past a sealed segment = %v, %v", seg, ok, err)
			}
		}
		equalSeq(t, "node 4 drains", drain(t, ctx, s4, topic, total+1), want)
		if got := stateOf(t, s4, topic); got.SegmentLeaders["9"] == 4 {
			t.Fatalf("node 4 leads the open segment: %+v", got)
		}
	})
}

// putRetry puts value through s, retrying (with a fresh value per attempt,
// so that a failed attempt that was written anyway is recognisable) until
// one attempt is acknowledged. It returns the acknowledged value and the
// failed ones.
func putRetry(t *testing.T, ctx context.Context, s *broker.Server, topic, value string, attempt, timeout time.Duration) (string, []string) {
	t.Helper()
	var failed []string
	deadline := time.Now().Add(timeout)
	for i := 0; ; i++ {
		v := fmt.Sprintf("%s/%d", value, i)
		actx, cancel := context.WithTimeout(ctx, attempt)
		_, err := s.Put(actx, topic, rec(v))
		cancel()
		if err == nil {
			return v, failed
		}
		failed = append(failed, v)
		if time.Now().After(deadline) {
			t.Fatalf("node %d: Put keeps failing for %v: %v", s.NodeID(), timeout, err)
		}
		t.Logf("node %d: Put %s: %v (retrying)", s.NodeID(), v, err)
	}
}

// without returns vs minus the values in drop.
func without(vs, drop []string) []string {
	skip := map[string]bool{}
	for _, d := range drop {
		skip[d] = true
	}
	var out []string
	for _, v := range vs {
		if !skip[v] {
			out = append(out, v)
		}
	}
	return out
}

// TestRaftLeaderLoss: when the Raft leader (which leads no segment of the
// topic) stops, writes and reads through the survivors continue after the
// re-election, and the old leader, restarted on its directory without
// --join, catches up.
func TestRaftLeaderLoss(t *testing.T) {
	c := newCluster(t, 3, nil)
	ctx := testCtx(t, 90*time.Second)
	leader := c.raftLeader()
	topic, segLeader := topicLedBy(t, ctx, leader.srv, "loss", func(l uint64) bool { return l != leader.id })
	var survivors []*node
	for _, n := range c.nodes {
		if n != leader {
			survivors = append(survivors, n)
		}
	}
	t.Logf("raft leader node %d; topic %s on node %d", leader.id, topic, segLeader)

	acked := seq("a", 10)
	for i, v := range acked {
		if _, err := c.nodes[i%3].srv.Put(ctx, topic, rec(v)); err != nil {
			t.Fatal(err)
		}
	}
	var delivered []string
	for range 2 {
		e, ok, err := survivors[0].srv.Get(ctx, topic)
		if err != nil || !ok {
			t.Fatalf("Get = %v, %v", ok, err)
		}
		delivered = append(delivered, string(e.Value))
	}

	c.stop(leader)
	start := time.Now()
	// One GET and one REGISTER with the whole RequestTimeout, at once: their
	// proposals start while the survivors still name the stopped node as
	// the Raft leader, and the re-election happens well within the timeout.
	registered := make(chan error, 1)
	go func() { registered <- survivors[0].srv.Register(ctx, "after-loss") }()
	e, ok, err := survivors[1].srv.Get(ctx, topic)
	if err != nil || !ok {
		t.Fatalf("Get through node %d right after the Raft leader stopped: %v, %v (after %v)",
			survivors[1].id, ok, err, time.Since(start).Round(time.Millisecond))
	}
	delivered = append(delivered, string(e.Value))
	t.Logf("first read after the leader stopped served in %v", time.Since(start).Round(time.Millisecond))
	if err := <-registered; err != nil {
		t.Fatalf("Register through node %d right after the Raft leader stopped: %v", survivors[0].id, err)
	}
	t.Logf("register after the leader stopped done in %v", time.Since(start).Round(time.Millisecond))
	v, failed := putRetry(t, ctx, survivors[0].srv, topic, "b", requestTimeout, 20*time.Second)
	acked = append(acked, v)
	t.Logf("first write after the leader stopped acknowledged in %v", time.Since(start).Round(time.Millisecond))
	newLeader := c.raftLeader()
	if newLeader == leader {
		t.Fatal("no new leader")
	}
	for i, v := range seq("c", 6) {
		if _, err := survivors[i%2].srv.Put(ctx, topic, rec(v)); err != nil {
			t.Fatalf("Put through node %d under the new leader: %v", survivors[i%2].id, err)
		}
		acked = append(acked, v)
	}

	// The old leader restarts from its own Raft log and catches up.
	c.restart(leader)
	want := stateOf(t, newLeader.srv, topic)
	waitFor(t, 10*time.Second, func() error {
		m, lm := metricsOf(t, leader.srv), metricsOf(t, newLeader.srv)
		if m.Walrus.MetadataIndex < lm.Walrus.MetadataIndex {
			return fmt.Errorf("restarted node at metadata index %d, leader at %d", m.Walrus.MetadataIndex, lm.Walrus.MetadataIndex)
		}
		if m.CurrentLeader == nil || *m.CurrentLeader != newLeader.id || m.State != "Follower" {
			return fmt.Errorf("restarted node: state %s, leader %v", m.State, m.CurrentLeader)
		}
		if st := stateOf(t, leader.srv, topic); st.Cursor != want.Cursor || st.CurrentEpoch != want.CurrentEpoch {
			return fmt.Errorf("restarted node's STATE %+v, leader's %+v", st, want)
		}
		return nil
	})
	c.waitMembers(3)
	for _, v := range seq("d", 3) {
		if _, err := leader.srv.Put(ctx, topic, rec(v)); err != nil {
			t.Fatalf("Put through the restarted node: %v", err)
		}
		acked = append(acked, v)
	}
	delivered = append(delivered, drain(t, ctx, leader.srv, topic, 100)...)
	equalSeq(t, "every acknowledged write, once, in order", without(delivered, failed), acked)
}

// TestFailover: when the leader of a topic's open segment stops, the Raft
// leader fails the segment over within FailoverTimeout and writes resume on
// the next segment; the pending segment's reads wait for the old leader,
// which reports its count when it restarts, and every acknowledged entry is
// read back in order. The stopped node leads either the segment only, or
// the segment and Raft (then an election comes first).
func TestFailover(t *testing.T) {
	t.Run("segment leader", func(t *testing.T) { testFailover(t, false) })
	t.Run("segment and raft leader", func(t *testing.T) { testFailover(t, true) })
}

func testFailover(t *testing.T, raftLeaderToo bool) {
	const maxEntries = 1000
	c := newCluster(t, 3, func(cfg *broker.Config) { cfg.MaxSegmentEntries = maxEntries })
	ctx := testCtx(t, 90*time.Second)
	leader := c.raftLeader()
	topic, victimID := topicLedBy(t, ctx, leader.srv, "fo", func(l uint64) bool { return (l == leader.id) == raftLeaderToo })
	victim := c.node(victimID)
	var other *node // writes and reads go through it
	for _, n := range c.nodes {
		if n != victim && (n != leader || raftLeaderToo) {
			other = n
		}
	}
	t.Logf("raft leader node %d; topic %s segment 1 on node %d; writing through node %d", leader.id, topic, victim.id, other.id)

	acked := seq("before", 10)
	putAll(t, ctx, other.srv, topic, acked)
	before := stateOf(t, other.srv, topic)

	c.stop(victim)
	start := time.Now()
	v, failed := putRetry(t, ctx, other.srv, topic, "after", time.Second, 20*time.Second)
	acked = append(acked, v)
	t.Logf("writes resumed %v after the stop", time.Since(start).Round(time.Millisecond))
	for _, v := range seq("more", 5) {
		if _, err := other.srv.Put(ctx, topic, rec(v)); err != nil {
			t.Fatal(err)
		}
		acked = append(acked, v)
	}

	after := stateOf(t, other.srv, topic)
	if after.CurrentSegment <= before.CurrentSegment || after.LeaderNode == victim.id ||
		len(after.PendingSegments) != 1 || after.PendingSegments[0] != before.CurrentSegment {
		t.Fatalf("no failover: before %+v, after %+v", before, after)
	}
	// The pending segment holds the cursor: GET reports it unavailable and
	// consumes nothing.
	if _, _, err := other.srv.Get(ctx, topic); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Get while segment %d is pending: %v, want ErrUnavailable", before.CurrentSegment, err)
	}
	if _, _, err := other.srv.Fetch(ctx, topic, before.CurrentSegment, 0); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Fetch of the pending segment: %v, want ErrUnavailable", err)
	}
	// Offsets stay unique: the new segment starts past the pending one's
	// reservation.
	e, ok, err := other.srv.Fetch(ctx, topic, after.CurrentSegment, 0)
	if err != nil || !ok || e.Offset != maxEntries {
		t.Fatalf("first entry of segment %d: %+v, %v, %v; want offset %d", after.CurrentSegment, e, ok, err, maxEntries)
	}

	restarted := time.Now()
	c.restart(victim)
	t.Logf("node %d restarted in %v", victim.id, time.Since(restarted).Round(time.Millisecond))
	waitFor(t, 15*time.Second, func() error {
		for _, n := range c.nodes {
			st := stateOf(t, n.srv, topic)
			if len(st.PendingSegments) != 0 || st.SealedSegments[strconv.FormatUint(before.CurrentSegment, 10)] != 10 {
				return fmt.Errorf("node %d: STATE %+v", n.id, st)
			}
		}
		return nil
	})
	t.Logf("segment %d finalized %v after the restart began", before.CurrentSegment, time.Since(restarted).Round(time.Millisecond))
	got := drain(t, ctx, victim.srv, topic, 100)
	equalSeq(t, "every acknowledged write, in order", without(got, failed), acked)
}

// TestPutDuringFailover: one PUT issued right after the leader of the open
// segment stops, with RequestTimeout (5s) > FailoverTimeout (2s), should
// land on the segment the failover opens (doc.go: Put "retries stale routes
// (rollover, failover, leader change) within RequestTimeout").
func TestPutDuringFailover(t *testing.T) {
	c := newCluster(t, 3, nil)
	ctx := testCtx(t, 60*time.Second)
	leader := c.raftLeader()
	topic, victimID := topicLedBy(t, ctx, leader.srv, "pf", func(l uint64) bool { return l != leader.id })
	victim := c.node(victimID)
	putAll(t, ctx, leader.srv, topic, seq("before", 3))
	c.stop(victim)
	start := time.Now()
	if _, err := leader.srv.Put(ctx, topic, rec("during")); err != nil {
		t.Fatalf("Put right after the segment leader stopped: %v (after %v; failover timeout %v, request timeout %v)",
			err, time.Since(start).Round(time.Millisecond), failoverTimeout, requestTimeout)
	}
	t.Logf("Put acknowledged %v after the stop", time.Since(start).Round(time.Millisecond))
}

// TestSegmentEntryLimit: concurrent appends to one segment leader never
// put more than MaxSegmentEntries entries in a segment. The limit matters
// beyond the original's contract: a failover reserves exactly
// MaxSegmentEntries offsets for the pending segment, and the FSM refuses a
// FinalizeSeal whose count exceeds the reservation, so an overfull segment
// that is failed over stays pending (unreadable) for good, and its extra
// entries' offsets overlap the next segment's.
func TestSegmentEntryLimit(t *testing.T) {
	const limit, writers, each = 5, 8, 15
	c := newCluster(t, 1, func(cfg *broker.Config) { cfg.MaxSegmentEntries = limit })
	s := c.srv(1)
	ctx := testCtx(t, 30*time.Second)
	if err := s.Register(ctx, "limit"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				if _, err := s.Put(ctx, "limit", rec(fmt.Sprintf("w%d-%d", w, i))); err != nil {
					t.Errorf("Put: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	st := stateOf(t, s, "limit")
	for id, n := range st.SealedSegments {
		if n > limit {
			t.Errorf("segment %s sealed with %d entries, limit %d", id, n, limit)
		}
	}
	if t.Failed() {
		t.Logf("STATE %+v", st)
	}
}
