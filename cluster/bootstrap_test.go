package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"
)

// Three new nodes started at once with the same Join list and
// BootstrapExpect 3 form one cluster: node 1 bootstraps, the others join.
// When node 1 later loses its data directory, it does not bootstrap a second
// cluster: the others are not new, so it joins and is refused as replaced.
func TestNode_BootstrapExpect(t *testing.T) {
	c := newTestCluster(t)
	var all []string
	for id := NodeID(1); id <= 3; id++ {
		c.config(id) // assigns the address
		all = append(all, c.addrs[id])
	}
	c.tune = func(cfg *Config) {
		cfg.Join = all
		cfg.BootstrapExpect = 3
	}
	c.startAll(3, 2, 1)
	leader := c.leader()
	for id, n := range c.nodes {
		if v := n.Voters(); !slices.Equal(v, []NodeID{1, 2, 3}) {
			t.Fatalf("node %d: voters %v, want one cluster of 1, 2, 3", id, v)
		}
	}
	c.converged(leader)

	// Node 1 comes back with an empty directory (a lost volume).
	c.stop(1)
	if err := os.RemoveAll(c.dirs[1]); err != nil {
		t.Fatal(err)
	}
	c.uuids[1] = fmt.Sprintf("uuid-1-new-%d", time.Now().UnixNano())
	_, err := c.tryStart(c.config(1))
	if !errors.Is(err, ErrNodeReplaced) {
		t.Fatalf("node 1 restarted on an empty directory: %v, want ErrNodeReplaced (no second cluster)", err)
	}
	c.leader() // nodes 2 and 3 still have one
}

// A node waiting for BootstrapExpect answers joins "fresh", and keeps
// waiting while too few new nodes answer; it never bootstraps alone.
func TestNode_BootstrapExpectWaits(t *testing.T) {
	c := newTestCluster(t)
	c.config(1)
	c.config(2)
	silent := freeAddr(t) // nobody listens there
	c.tune = func(cfg *Config) {
		cfg.Join = []string{c.addrs[1], c.addrs[2], silent}
		cfg.BootstrapExpect = 3
	}
	n, err := New(c.config(2))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	started := make(chan error, 1)
	go func() { started <- n.Start(ctx) }()
	waitFor(t, 5*time.Second, func() error {
		resp, err := joinRPC(context.Background(), c.addrs[2], &joinRequest{Node: NodeInfo{ID: 9, UUID: "u9", RaftAddr: "127.0.0.1:1"}, DryRun: true})
		if err != nil {
			return err
		}
		if resp.Code != codeFresh || len(resp.Members) != 1 || resp.Members[0].ID != 2 {
			return fmt.Errorf("answer %+v, want fresh from node 2", resp)
		}
		return nil
	})
	if err := <-started; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Start with 1 of 3 expected nodes: %v, want it to wait until its deadline", err)
	}
	if n.IsLeader() || len(n.Voters()) != 0 {
		t.Fatalf("node 2 bootstrapped alone: leader %v, voters %v", n.IsLeader(), n.Voters())
	}
}

// A node added as a voter that stopped before it stored anything (growing
// from one voter to two, the leader then cannot commit or be elected
// without it) comes back with no Raft state: its dry run is answered so
// that it takes Raft traffic again, the cluster gets a leader, and the
// join completes. Otherwise the cluster has no leader for good.
func TestNode_JoinerAddedBeforeItStored(t *testing.T) {
	c := newTestCluster(t)
	var all []string
	for id := NodeID(1); id <= 3; id++ {
		c.config(id)
		all = append(all, c.addrs[id])
	}
	c.start(1)
	// Node 2's join reaches the leader, which adds it; node 2 is gone
	// before it takes any Raft traffic.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, _ = joinRPC(ctx, c.addrs[1], &joinRequest{Node: NodeInfo{ID: 2, UUID: c.uuids[2], RaftAddr: c.addrs[2], RouteURL: c.routes[2]}})
	cancel()
	waitFor(t, 10*time.Second, func() error {
		if v := c.nodes[1].Voters(); !slices.Equal(v, []NodeID{1, 2}) {
			return fmt.Errorf("voters %v, want 1 and 2", v)
		}
		if c.nodes[1].IsLeader() {
			return errors.New("node 1 still leads")
		}
		return nil
	})
	c.tune = func(cfg *Config) { cfg.Join = all; cfg.BootstrapExpect = 3 }
	c.startAll(2, 3)
	leader := c.leader()
	for id, n := range c.nodes {
		if v := n.Voters(); !slices.Equal(v, []NodeID{1, 2, 3}) {
			t.Fatalf("node %d: voters %v, want 1, 2, 3", id, v)
		}
	}
	c.converged(leader)
}
