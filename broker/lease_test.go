package broker_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/walrus-edge/walrus/broker"
)

// TestLeaseExpiryDuringAppends: a segment leader that loses contact with
// the Raft quorum stops acknowledging, and an append whose lease ran out
// during its durable write is not written a second time by a retry. Writers
// append without pause to a segment led by a follower (one locally, one
// forwarded through the third node) while the Raft leader stops: the lease
// (short here) runs out before the re-election, so appends are in flight
// at that moment; every acknowledged write must then be read back exactly
// once and in order.
func TestLeaseExpiryDuringAppends(t *testing.T) {
	c := newCluster(t, 3, func(cfg *broker.Config) { cfg.LeaseTimeout = 100 * time.Millisecond })
	ctx := testCtx(t, 60*time.Second)
	leader := c.raftLeader()
	topic, segID := topicLedBy(t, ctx, leader.srv, "lease", func(l uint64) bool { return l != leader.id })
	seg := c.node(segID)
	var fwd *node
	for _, n := range c.nodes {
		if n != leader && n != seg {
			fwd = n
		}
	}

	type writer struct {
		via    *node
		acked  []string
		failed []string
		errs   []error
	}
	writers := []*writer{{via: seg}, {via: fwd}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w, wr := range writers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				v := fmt.Sprintf("w%d-%05d", w, i)
				pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				_, err := wr.via.srv.Put(pctx, topic, rec(v))
				cancel()
				if err == nil {
					wr.acked = append(wr.acked, v)
				} else {
					wr.failed = append(wr.failed, v)
					wr.errs = append(wr.errs, err)
				}
			}
		})
	}
	time.Sleep(300 * time.Millisecond) // appends under way
	c.stop(leader)
	newLeader := c.raftLeader()
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	t.Logf("raft leader %d stopped, node %d leads now; segment leader %d; acked %d+%d, failed %d+%d",
		leader.id, newLeader.id, seg.id, len(writers[0].acked), len(writers[1].acked), len(writers[0].failed), len(writers[1].failed))

	for w, wr := range writers {
		for i, err := range wr.errs {
			t.Logf("writer %d: %s failed: %v", w, wr.failed[i], err)
		}
	}
	got := fetchAll(t, ctx, seg.srv, topic)
	count := map[string]int{}
	for _, v := range got {
		count[v]++
	}
	for v, n := range count {
		if n > 1 {
			t.Errorf("%s written %d times", v, n)
		}
	}
	for w, wr := range writers {
		var mine []string
		for _, v := range got {
			if v[:2] == fmt.Sprintf("w%d", w) {
				mine = append(mine, v)
			}
		}
		equalSeq(t, fmt.Sprintf("writer %d (through node %d): acknowledged writes", w, wr.via.id), without(mine, wr.failed), wr.acked)
	}
}

// fetchAll reads every entry of topic through s with FETCH, segment by
// segment (faster than draining thousands of entries through the cursor).
func fetchAll(t *testing.T, ctx context.Context, s *broker.Server, topic string) []string {
	t.Helper()
	var out []string
	for seg := uint64(1); seg <= stateOf(t, s, topic).CurrentSegment; seg++ {
		for idx := uint64(0); ; idx++ {
			e, ok, err := s.Fetch(ctx, topic, seg, idx)
			if err != nil {
				t.Fatalf("node %d: Fetch(%s, %d, %d): %v", s.NodeID(), topic, seg, idx, err)
			}
			if !ok {
				break
			}
			out = append(out, string(e.Value))
		}
	}
	return out
}

// TestLeaseAfterLeaderChange: a new Raft leader's first log entry is a
// no-op, which the metadata never counts. A follower that leads a segment
// must still renew its write lease from the new leader's heartbeat answers
// (whose index covers the no-op) and acknowledge writes, with no metadata
// change to catch up on.
func TestLeaseAfterLeaderChange(t *testing.T) {
	const lease = time.Second
	c := newCluster(t, 3, func(cfg *broker.Config) { cfg.LeaseTimeout = lease })
	ctx := testCtx(t, 60*time.Second)
	old := c.raftLeader()
	var topics []string
	for i := range 12 {
		name := fmt.Sprintf("noop-%d", i)
		if err := old.srv.Register(ctx, name); err != nil {
			t.Fatal(err)
		}
		topics = append(topics, name)
	}
	old.srv.HandOff(ctx) // rolls old's segments over, then transfers the leadership
	leader := c.raftLeader()
	if leader == old {
		t.Fatal("the leadership did not move")
	}
	// The segments led by the node that neither led nor leads Raft.
	var third *node
	for _, n := range c.nodes {
		if n != old && n != leader {
			third = n
		}
	}
	var mine []string
	for _, name := range topics {
		if st := stateOf(t, leader.srv, name); st.LeaderNode == third.id {
			mine = append(mine, name)
		}
	}
	if len(mine) == 0 {
		t.Fatalf("no topic led by node %d", third.id)
	}
	// Any lease renewed before the change has run out by now.
	time.Sleep(2 * lease)
	for _, name := range mine {
		pctx, cancel := context.WithTimeout(ctx, 4*time.Second)
		_, err := third.srv.Put(pctx, name, rec("after"))
		cancel()
		if err != nil {
			t.Fatalf("node %d, follower of the new leader %d: Put(%s): %v", third.id, leader.id, name, err)
		}
	}
}
