package broker_test

import (
	"fmt"
	"testing"

	"github.com/walrus-edge/walrus/broker"
)

// The deduplication window is read back from the log by a topic's new
// leader: a retry with the same Nats-Msg-Id is answered with the first
// copy's position, not stored again, after the segment rolled over to
// another node and after the leader restarted.
func TestNATSAPI_DedupSurvivesRolloverAndRestart(t *testing.T) {
	c := newCluster(t, 3, func(cfg *broker.Config) { cfg.MaxSegmentEntries = 4 })
	nc := natsClient(t, c.srv(1))
	decodeReply[map[string]any](t, request(t, nc, "walrus.admin.register.orders", ""))

	// Ten ids over three segments: the leadership of the open segment moves
	// from node to node at every rollover.
	first := map[string]natsAck{}
	for i := range 10 {
		id := fmt.Sprintf("order-%d", i)
		a := decodeReply[natsAck](t, request(t, nc, "walrus.pub.orders", id, "Nats-Msg-Id", id))
		if a.Offset != uint64(i) || a.Duplicate {
			t.Fatalf("first copy of %s: %+v", id, a)
		}
		first[id] = a
	}
	retryAll := func(when string) {
		t.Helper()
		for i := range 10 {
			id := fmt.Sprintf("order-%d", i)
			a := decodeReply[natsAck](t, request(t, nc, "walrus.pub.orders", id, "Nats-Msg-Id", id))
			if !a.Duplicate || a.Offset != first[id].Offset || a.Segment != first[id].Segment {
				t.Fatalf("%s: retry of %s: %+v, want the first copy %+v as a duplicate", when, id, a, first[id])
			}
		}
	}
	st := stateOf(t, c.srv(1), "orders")
	if len(st.SealedSegments) < 2 {
		t.Fatalf("want at least two rollovers, got %+v", st)
	}
	retryAll("after rollovers to other nodes")

	// Restart the open segment's leader: its in-memory window is gone.
	leader := st.LeaderNode
	c.stop(c.node(leader))
	c.restart(c.node(leader))
	retryAll(fmt.Sprintf("after node %d, the segment leader, restarted", leader))

	f := decodeReply[natsFetch](t, request(t, nc, "walrus.fetch.orders", `{"max":100}`))
	if len(f.Entries) != 10 {
		t.Fatalf("the topic holds %d entries, want the 10 first copies: %v", len(f.Entries), f.values())
	}
}
