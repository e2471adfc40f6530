package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"testing"
	"time"
)

func TestNode_SingleBootstrapAndRestart(t *testing.T) {
	c := newTestCluster(t)
	n := c.start(1)
	if n.HasState() {
		t.Fatal("a new node reports existing state")
	}
	if !n.IsLeader() {
		t.Fatal("a bootstrapped node returned from Start without leading")
	}
	select {
	case v := <-n.LeaderCh():
		if !v {
			t.Fatal("LeaderCh: false, want true")
		}
	case <-time.After(time.Second):
		t.Fatal("LeaderCh: nothing")
	}
	self, ok := n.Metadata().Node(1)
	if !ok || self.RaftAddr != c.addrs[1] || self.UUID != c.uuids[1] {
		t.Fatalf("self record %+v (%v)", self, ok)
	}
	res := c.createTopic("orders", 1)
	if res.Segment != 1 || res.Index == 0 {
		t.Fatalf("create_topic result %+v", res)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.WaitIndex(ctx, res.Index); err != nil {
		t.Fatal(err)
	}
	if _, ok := n.Metadata().Topic("orders"); !ok {
		t.Fatal("topic not in the metadata")
	}
	// A no-op index (the one after the last command) is waitable too.
	st := n.Status()
	if st.State != "Leader" || st.LeaderID != 1 || !slices.Equal(st.Voters, []NodeID{1}) ||
		st.Nodes[1] != c.addrs[1] || st.CommitIndex < res.Index || st.LastLogIndex < res.Index || st.CurrentTerm == 0 {
		t.Fatalf("status %+v", st)
	}
	if h := n.PeerHealth(); len(h) != 1 || h[1].Failing {
		t.Fatalf("peer health %+v", h)
	}
	before := dump(n.Metadata())
	c.stop(1)
	if !errors.Is(n.Shutdown(ctx), nil) {
		t.Fatal("second Shutdown failed")
	}
	if _, err := n.Propose(ctx, Command{Type: CmdDeleteTopic, Topic: "orders"}); !errors.Is(err, ErrShutdown) {
		t.Fatalf("Propose after Shutdown: %v, want ErrShutdown", err)
	}

	// Restart on another port: the node records its new address, in the
	// metadata and in the Raft configuration.
	c.addrs[1] = freeAddr(t)
	n = c.start(1)
	if !n.HasState() {
		t.Fatal("a restarted node reports no state")
	}
	if rec, _ := n.Metadata().Node(1); rec.RaftAddr != c.addrs[1] {
		t.Fatalf("recorded raft address %s, want %s", rec.RaftAddr, c.addrs[1])
	}
	if st := n.Status(); st.Nodes[1] != c.addrs[1] {
		t.Fatalf("configuration address %s, want %s", st.Nodes[1], c.addrs[1])
	}
	before.Index = n.Metadata().Index // the address update
	before.Nodes[0].RaftAddr = c.addrs[1]
	if !n.IsLeader() {
		t.Fatal("a restarted single node is not the leader")
	}
	if got := dump(n.Metadata()); !equalDump(got, before) {
		t.Fatalf("metadata after restart %+v, want %+v", got, before)
	}
	if st := n.Status(); st.CurrentTerm < 2 || len(st.Voters) != 1 {
		t.Fatalf("status after restart %+v (want a new term, one voter)", st)
	}
	c.createTopic("more", 1)
}

func equalDump(a, b snapshotState) bool { return reflect.DeepEqual(a, b) }

// startThree bootstraps node 1 and joins 2 through 1 and 3 through 2 (a
// redirect to the leader).
func startThree(t *testing.T, c *testCluster) {
	t.Helper()
	c.start(1)
	c.start(2, c.addrs[1])
	c.start(3, c.addrs[2])
}

func TestNode_ThreeNodes(t *testing.T) {
	c := newTestCluster(t)
	startThree(t, c)
	for id, n := range c.nodes {
		if v := n.Voters(); !slices.Equal(v, []NodeID{1, 2, 3}) {
			t.Fatalf("node %d voters %v", id, v)
		}
		if len(n.Members()) != 3 {
			t.Fatalf("node %d members %+v", id, n.Members())
		}
	}
	if m := c.nodes[3].JoinedMembers(); len(m) < 2 || m[0].RouteURL == "" {
		t.Fatalf("joined members of node 3: %+v", m)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// A follower refuses proposals and names the leader (retried in case
	// leadership moves under a loaded machine).
	waitFor(t, 10*time.Second, func() error {
		leader := c.leader()
		follower := c.nodes[leader.ID()%3+1]
		_, err := follower.Propose(ctx, Command{Type: CmdCreateTopic, Topic: "x", NodeID: 2, MaxEntries: 10})
		var nle *NotLeaderError
		if !errors.Is(err, ErrNotLeader) || !errors.As(err, &nle) {
			t.Fatalf("Propose on a follower: %v", err)
		}
		if nle.LeaderID != leader.ID() || nle.LeaderAddr != c.addrs[leader.ID()] {
			return fmt.Errorf("follower names leader %d at %s, want %d", nle.LeaderID, nle.LeaderAddr, leader.ID())
		}
		if err := follower.AddVoter(ctx, NodeInfo{ID: 9, UUID: "u", RaftAddr: "127.0.0.1:1"}); !errors.Is(err, ErrNotLeader) {
			t.Fatalf("AddVoter on a follower: %v", err)
		}
		return nil
	})
	data, _ := (&Command{Type: CmdCreateTopic, Topic: "raw", NodeID: 3, MaxEntries: 10}).Encode()
	waitFor(t, 10*time.Second, func() error {
		res, err := c.leader().ProposeRaw(ctx, data)
		if err == nil && !res.Applied && res.Reason != "topic exists" {
			t.Fatalf("ProposeRaw: %+v", res)
		}
		return err
	})
	leader := c.leader()
	last := leader.Status().LastLogIndex
	if _, err := leader.ProposeRaw(ctx, []byte(`{"type":"bogus"}`)); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("ProposeRaw of an invalid command: %v", err)
	}
	if got := leader.Status().LastLogIndex; got != last && leader.IsLeader() {
		t.Fatalf("an invalid command reached the log: last index %d, was %d", got, last)
	}
	c.createTopic("orders", 2)
	leader = c.leader()
	c.converged(leader)
	if _, ok := c.nodes[3].Metadata().Topic("raw"); !ok {
		t.Fatal("node 3 misses topic raw")
	}

	// AddVoter is idempotent for a member at its address: no new entry.
	info, _ := leader.Metadata().Node(3)
	before := leader.Status().LastLogIndex
	if err := leader.AddVoter(ctx, info); err != nil && !errors.Is(err, ErrNotLeader) {
		t.Fatalf("AddVoter again: %v", err)
	}
	if after := leader.Status().LastLogIndex; after > before+1 { // +1: the barrier
		t.Fatalf("AddVoter of a member wrote %d entries", after-before)
	}
	waitFor(t, 10*time.Second, func() error {
		leader := c.leader()
		follower := c.nodes[leader.ID()%3+1]
		st := follower.Status()
		if st.State != "Follower" || st.LeaderID != leader.ID() || len(st.Nodes) != 3 || st.LastContact.IsZero() || len(st.Peers) != 0 {
			return fmt.Errorf("follower status %+v", st)
		}
		if len(follower.PeerHealth()) != 0 {
			t.Fatal("a follower reports peer health")
		}
		h := leader.PeerHealth()
		if len(h) != 3 || h[follower.ID()].Failing || h[3].Addr != c.addrs[3] {
			return fmt.Errorf("leader peer health %+v", h)
		}
		if time.Since(leader.LastContact()) > time.Second {
			return fmt.Errorf("leader last contact %v", leader.LastContact())
		}
		return nil
	})
}

func TestNode_LeaderFailure(t *testing.T) {
	c := newTestCluster(t)
	startThree(t, c)
	old := c.leader()
	c.createTopic("before", 1)
	c.converged(old)
	c.stop(old.ID())

	leader := c.leader()
	if leader.ID() == old.ID() {
		t.Fatal("the stopped node still leads")
	}
	waitFor(t, 10*time.Second, func() error {
		if p := c.leader().PeerHealth()[old.ID()]; !p.Failing || p.FailingSince.IsZero() {
			return fmt.Errorf("peer health of the stopped node: %+v", p)
		}
		return nil
	})
	c.createTopic("after", leader.ID())

	n := c.start(old.ID()) // no Join: restarts from its directory
	if _, ok := n.Metadata().Topic("after"); !ok {
		t.Fatal("the restarted node did not catch up before Start returned")
	}
	leader = c.leader()
	c.createTopic("later", leader.ID())
	c.converged(leader)
	waitFor(t, 10*time.Second, func() error {
		if p := c.leader().PeerHealth()[old.ID()]; p.Failing {
			return fmt.Errorf("the restarted node still fails heartbeats: %+v", p)
		}
		return nil
	})
}

func TestNode_FullClusterRestart(t *testing.T) {
	c := newTestCluster(t)
	startThree(t, c)
	leader := c.leader()
	for i := range 5 {
		c.createTopic(fmt.Sprintf("t%d", i), NodeID(i%3+1))
	}
	c.converged(leader)
	want := dump(leader.Metadata())
	for _, id := range []NodeID{1, 2, 3} {
		c.stop(id)
	}

	c.routes[3] = "nats-route://127.0.0.1:17003" // node 3's record changes
	c.startAll(1, 2, 3)
	if rec, _ := c.nodes[3].Metadata().Node(3); rec.RouteURL != c.routes[3] {
		t.Fatalf("node 3 returned from Start before its record was updated: %+v", rec)
	}
	leader = c.leader()
	c.converged(leader)
	for id, n := range c.nodes {
		if rec, _ := n.Metadata().Node(3); rec.RouteURL != c.routes[3] {
			t.Fatalf("node %d: node 3 recorded with route %s", id, rec.RouteURL)
		}
	}
	want.Nodes[2].RouteURL = c.routes[3]
	for id, n := range c.nodes {
		if !n.HasState() {
			t.Fatalf("node %d found no state", id)
		}
		got := dump(n.Metadata())
		want.Index = got.Index // + node 3's update
		if !equalDump(got, want) {
			t.Fatalf("node %d metadata %+v, want %+v", id, got, want)
		}
	}
	c.createTopic("new", 2)
	c.converged(leader)
}

func TestNode_WipedNodeIsRefused(t *testing.T) {
	c := newTestCluster(t)
	startThree(t, c)
	leader := c.leader()
	c.createTopic("before", 3)
	c.converged(leader)
	c.stop(3)
	if err := os.RemoveAll(c.dirs[3]); err != nil {
		t.Fatal(err)
	}
	c.uuids[3] = "a-new-uuid"
	cfg := c.config(3, c.addrs[2], c.addrs[1])
	cfg.JoinTimeout = 5 * time.Second
	start := time.Now()
	_, err := c.tryStart(cfg)
	if !errors.Is(err, ErrNodeReplaced) {
		t.Fatalf("Start of a wiped node: %v, want ErrNodeReplaced", err)
	}
	if time.Since(start) > 3*time.Second {
		t.Fatalf("a refused join was retried (%s)", time.Since(start))
	}
	if rec, _ := leader.Metadata().Node(3); rec.UUID == "a-new-uuid" {
		t.Fatal("the metadata took the wiped node's uuid")
	}
	if v := leader.Voters(); !slices.Equal(v, []NodeID{1, 2, 3}) {
		t.Fatalf("voters %v", v)
	}
	c.createTopic("after", 1)
	c.converged(c.leader())
}

func TestNode_CatchUpFromSnapshot(t *testing.T) {
	c := newTestCluster(t)
	c.tune = func(cfg *Config) {
		cfg.SnapshotThreshold = 16
		cfg.TrailingLogs = 4
		cfg.SnapshotInterval = 20 * time.Millisecond
		// raft-wal v0.4.2 still serves compacted entries from its tail
		// segment: small segments make compaction drop them, so that node 4
		// must be sent a snapshot.
		cfg.WALSegmentSize = 4 << 10
	}
	startThree(t, c)
	leader := c.leader()
	for i := range 40 {
		c.createTopic(fmt.Sprintf("t%02d", i), NodeID(i%3+1))
	}
	waitFor(t, 10*time.Second, func() error {
		first, err := leader.mu.wal.FirstIndex()
		if err != nil {
			return err
		}
		if st := leader.Status(); st.SnapshotIndex == 0 || first <= 1 {
			return fmt.Errorf("no snapshot and compaction yet: snapshot %d, first log index %d", st.SnapshotIndex, first)
		}
		return nil
	})

	n := c.start(4, c.addrs[2])
	if st := n.Status(); st.SnapshotIndex == 0 {
		t.Fatalf("node 4 caught up without installing a snapshot: %+v", st)
	}
	if _, ok := n.Metadata().Topic("t39"); !ok {
		t.Fatal("node 4 returned from Start without the metadata")
	}
	if v := n.Voters(); !slices.Equal(v, []NodeID{1, 2, 3, 4}) {
		t.Fatalf("voters %v", v)
	}
	c.createTopic("last", 4)
	c.converged(leader)
}

func TestNode_ConfigValidation(t *testing.T) {
	ok := Config{ID: 1, Dir: "d", BindAddr: "127.0.0.1:0", Self: NodeInfo{UUID: "u"}}
	tests := []struct {
		name string
		edit func(*Config)
		ok   bool
	}{
		{"valid", func(*Config) {}, true},
		{"no id", func(c *Config) { c.ID = 0 }, false},
		{"no dir", func(c *Config) { c.Dir = "" }, false},
		{"bad bind", func(c *Config) { c.BindAddr = "nope" }, false},
		{"unspecified advertise", func(c *Config) { c.BindAddr = "0.0.0.0:6000" }, false},
		{"explicit advertise", func(c *Config) { c.BindAddr, c.AdvertiseAddr = "0.0.0.0:6000", "node1:6000" }, true},
		{"no uuid", func(c *Config) { c.Self.UUID = "" }, false},
		{"self id mismatch", func(c *Config) { c.Self.ID = 2 }, false},
		{"bad join", func(c *Config) { c.Join = []string{"x"} }, false},
		{"lease above heartbeat", func(c *Config) { c.LeaderLeaseTimeout = 2 * time.Second }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ok
			tt.edit(&cfg)
			_, err := New(cfg)
			if (err == nil) != tt.ok {
				t.Fatalf("New: %v, want ok=%v", err, tt.ok)
			}
		})
	}
}
