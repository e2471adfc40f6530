package broker_test

import (
	"testing"
	"time"

	"github.com/walrus-edge/walrus/bridge"
	"github.com/walrus-edge/walrus/broker"
)

// A node that hands off before stopping leaves no failover behind: the
// open segments it led are sealed and continue on other nodes right away
// (no pending segment, no gap in topic offsets), the Raft leadership moves,
// and writes go on through the others at once — well within the failover
// timeout, which would otherwise have to pass first.
func TestHandOffBeforeStop(t *testing.T) {
	c := newCluster(t, 3, func(cfg *broker.Config) {
		cfg.LeaseTimeout = 2 * time.Second
		cfg.FailoverTimeout = time.Minute // a failover would stall the writes below
	})
	ctx := testCtx(t, 60*time.Second)
	leader := c.raftLeader()
	// The stopping node leads Raft and the topic's open segment.
	topic, _ := topicLedBy(t, ctx, leader.srv, "handoff", func(l uint64) bool { return l == leader.id })
	var other *node
	for _, n := range c.nodes {
		if n != leader {
			other = n
			break
		}
	}
	want := seq("before-", 5)
	putAll(t, ctx, other.srv, topic, want)

	leader.srv.HandOff(ctx)
	// HandOff returns once the stopping node applied its rollover.
	st := stateOf(t, leader.srv, topic)
	if st.LeaderNode == leader.id || len(st.PendingSegments) != 0 || st.SealedSegments["1"] != 5 {
		t.Fatalf("after the hand-off: %+v; want segment 1 sealed with 5 entries and the open segment elsewhere", st)
	}
	if m := metricsOf(t, leader.srv); m.State == "Leader" {
		t.Fatalf("node %d still leads Raft after the hand-off", leader.id)
	}
	c.stop(leader)

	// Writes go on at once, and the next entry's offset follows the sealed
	// segment's last (no failover gap).
	start := time.Now()
	after := seq("after-", 5)
	putAll(t, ctx, other.srv, topic, after)
	t.Logf("5 writes through node %d took %v after node %d stopped", other.id, time.Since(start).Round(time.Millisecond), leader.id)
	st = stateOf(t, other.srv, topic)
	if len(st.PendingSegments) != 0 || st.CurrentSegment != 2 {
		t.Fatalf("after a clean stop: %+v; want segment 2 open and nothing pending", st)
	}
	// Segment 1 lives on the stopped node; segment 2 holds the new writes at
	// offsets 5.. (no failover gap).
	for i, v := range after {
		e, ok, err := other.srv.Fetch(ctx, topic, 2, uint64(i))
		if err != nil || !ok || string(e.Value) != v || e.Offset != uint64(5+i) {
			t.Fatalf("segment 2 index %d: %q at offset %d, %v, %v; want %q at offset %d", i, e.Value, e.Offset, ok, err, v, 5+i)
		}
	}
}

// A node that is handing off gets no new segment: the rollovers that follow
// skip it (round robin would otherwise place every third segment on a node
// about to stop, and writes to it would wait for the failover).
func TestHandOffLeavingNodeGetsNoSegments(t *testing.T) {
	c := newCluster(t, 3, func(cfg *broker.Config) { cfg.MaxSegmentEntries = 2 })
	ctx := testCtx(t, 60*time.Second)
	leader := c.raftLeader()
	var leaving *node
	for _, n := range c.nodes {
		if n != leader {
			leaving = n
			break
		}
	}
	topic, _ := topicLedBy(t, ctx, leader.srv, "leaving", func(l uint64) bool { return l != leaving.id })
	leaving.srv.HandOff(ctx) // leads nothing: only says it is leaving
	putAll(t, ctx, leader.srv, topic, seq("v", 20))
	st := stateOf(t, leader.srv, topic)
	if len(st.SegmentLeaders) < 10 {
		t.Fatalf("want at least 10 segments, got %+v", st)
	}
	for seg, l := range st.SegmentLeaders {
		if l == leaving.id {
			t.Fatalf("segment %s was placed on node %d, which is leaving: %+v", seg, leaving.id, st)
		}
	}
}

// A leaving node that leads Raft places nothing on itself either. It may
// become Raft leader after its HandOff (an election it wins), and it sends
// itself no heartbeat: its own flag must count.
func TestHandOffLeavingRaftLeaderPlacesNothingOnItself(t *testing.T) {
	c := newCluster(t, 3, func(cfg *broker.Config) { cfg.MaxSegmentEntries = 2 })
	ctx := testCtx(t, 60*time.Second)
	leader := c.raftLeader()
	var other *node
	for _, n := range c.nodes {
		if n != leader {
			other = n
			break
		}
	}
	broker.MarkLeaving(leader.srv) // as if it had handed off and then won an election
	if err := other.srv.Register(ctx, "leaving-leader"); err != nil {
		t.Fatal(err)
	}
	putAll(t, ctx, other.srv, "leaving-leader", seq("v", 12))
	st := stateOf(t, other.srv, "leaving-leader")
	if len(st.SegmentLeaders) < 6 {
		t.Fatalf("want at least 6 segments, got %+v", st)
	}
	for seg, l := range st.SegmentLeaders {
		if l == leader.id {
			t.Fatalf("segment %s was placed on node %d, the leaving Raft leader: %+v", seg, leader.id, st)
		}
	}
}

// A heartbeat that arrives after a newer one from the same node (HandOff
// sends its own next to the periodic one) does not clear its leaving flag.
func TestHeartbeatsOutOfOrderKeepLeaving(t *testing.T) {
	c := newCluster(t, 1, nil)
	s := c.srv(1)
	now := time.Now().UnixNano()
	for _, step := range []struct {
		sent    int64
		leaving bool
		want    bool
	}{
		{now, true, true},          // HandOff's report
		{now - 1000, false, true},  // an older periodic one, late
		{now + 1000, false, false}, // a newer one (the node came back)
	} {
		got, err := broker.ReportHeartbeat(s, bridge.Heartbeat{NodeID: 9, SentUnixNano: step.sent, Leaving: step.leaving})
		if err != nil || got != step.want {
			t.Fatalf("report sent at %+d ns, leaving %v: node counted leaving %v (%v), want %v",
				step.sent-now, step.leaving, got, err, step.want)
		}
	}
}
