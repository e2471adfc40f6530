package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walrus-edge/walrus/broker/protocol"
	"github.com/walrus-edge/walrus/tests/testcluster"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testcluster.Cleanup()
	os.Exit(code)
}

// state is the part of STATE the tests read.
type state struct {
	CurrentSegment        uint64            `json:"current_segment"`
	LeaderNode            uint64            `json:"leader_node"`
	LastSealedEntryOffset uint64            `json:"last_sealed_entry_offset"`
	SealedSegments        map[string]uint64 `json:"sealed_segments"`
	SegmentLeaders        map[string]uint64 `json:"segment_leaders"`
	FirstOffset           uint64            `json:"first_offset"`
}

func topicState(t *testing.T, ctx context.Context, cl *protocol.Client, topic string) state {
	t.Helper()
	raw, err := cl.State(ctx, topic)
	if err != nil {
		t.Fatalf("STATE %s: %v", topic, err)
	}
	var st state
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatalf("STATE %s is not JSON: %v: %s", topic, err, raw)
	}
	return st
}

// drain reads topic through GET until EMPTY.
func drain(t *testing.T, ctx context.Context, cl *protocol.Client, topic string, limit int) []string {
	t.Helper()
	var out []string
	for len(out) <= limit {
		p, ok, err := cl.Get(ctx, topic)
		if err != nil {
			t.Fatalf("GET %s after %d entries: %v", topic, len(out), err)
		}
		if !ok {
			return out
		}
		out = append(out, string(p))
	}
	t.Fatalf("GET %s returned more than %d entries", topic, limit)
	return nil
}

func seq(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return out
}

func equal(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("%s:\n got  %d %q\n want %d %q", what, len(got), got, len(want), want)
	}
}

// Smoke: 20 messages written through one node are read back, exactly and
// in order, through another (crossing rollovers between nodes).
func TestScenario_Smoke(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{MaxSegmentEntries: 10})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w, r := c.Client(1), c.Client(2)
	if err := w.Register(ctx, "log-test"); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if err := w.Put(ctx, "log-test", []byte(fmt.Sprintf("hello-%d", i))); err != nil {
			t.Fatalf("PUT %d: %v", i, err)
		}
	}
	equal(t, "read back through node 2", drain(t, ctx, r, "log-test", 100), seq("hello-", 20))
}

// Rollover: threshold 10, 60 messages: at least 6 sealed segments, leaders
// rotating over all 3 nodes, exact read-back then EMPTY.
func TestScenario_Rollover(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{MaxSegmentEntries: 10})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w := c.Client(1)
	if err := w.Register(ctx, "rollover_demo"); err != nil {
		t.Fatal(err)
	}
	for i := range 60 {
		if err := w.Put(ctx, "rollover_demo", []byte(fmt.Sprintf("msg-%d", i))); err != nil {
			t.Fatalf("PUT %d: %v", i, err)
		}
	}
	st := topicState(t, ctx, w, "rollover_demo")
	if len(st.SealedSegments) < 6 {
		t.Fatalf("sealed segments = %v, want at least 6", st.SealedSegments)
	}
	for seg, n := range st.SealedSegments {
		if n != 10 {
			t.Fatalf("segment %s sealed with %d entries, want 10 (sealed: %v)", seg, n, st.SealedSegments)
		}
	}
	leaders := map[uint64]bool{}
	for _, l := range st.SegmentLeaders {
		leaders[l] = true
	}
	if len(leaders) != 3 {
		t.Fatalf("segment leaders %v use %d distinct nodes, want 3", st.SegmentLeaders, len(leaders))
	}
	equal(t, "read back through node 2", drain(t, ctx, c.Client(2), "rollover_demo", 200), seq("msg-", 60))
	// The same STATE on every node.
	for id := 2; id <= 3; id++ {
		other := topicState(t, ctx, c.Client(id), "rollover_demo")
		if fmt.Sprint(other.SealedSegments) != fmt.Sprint(st.SealedSegments) {
			t.Fatalf("node %d sees sealed %v, node 1 %v", id, other.SealedSegments, st.SealedSegments)
		}
	}
}

// Recovery: a full cluster stop and start keeps every entry and the shared
// cursor; new writes are accepted.
func TestScenario_Recovery(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{MaxSegmentEntries: 10})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cl := c.Client(1)
	if err := cl.Register(ctx, "recovery_test_topic"); err != nil {
		t.Fatal(err)
	}
	for i := range 15 {
		if err := cl.Put(ctx, "recovery_test_topic", []byte(fmt.Sprintf("msg-%d", i))); err != nil {
			t.Fatalf("PUT %d: %v", i, err)
		}
	}
	for i := range 3 { // the cursor moves past msg-0..2 before the restart
		p, ok, err := cl.Get(ctx, "recovery_test_topic")
		if err != nil || !ok || string(p) != fmt.Sprintf("msg-%d", i) {
			t.Fatalf("GET %d = %q, %v, %v", i, p, ok, err)
		}
	}
	for id := 1; id <= 3; id++ {
		c.Stop(id)
	}
	for id := 1; id <= 3; id++ {
		c.Start(id)
	}
	c.WaitReady(60 * time.Second)
	cl = c.Client(2)
	equal(t, "after restart", drain(t, ctx, cl, "recovery_test_topic", 100), seq("msg-", 15)[3:])
	if err := cl.Put(ctx, "recovery_test_topic", []byte("post-crash-msg")); err != nil {
		t.Fatal(err)
	}
	equal(t, "new write", drain(t, ctx, c.Client(3), "recovery_test_topic", 10), []string{"post-crash-msg"})
}

// Stress: 16 concurrent writers for a bounded time; every acknowledged write
// is read back exactly once, each writer's writes in order.
func TestScenario_Stress(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{MaxSegmentEntries: 500})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if err := c.Client(1).Register(ctx, "stress_test_topic"); err != nil {
		t.Fatal(err)
	}
	const writers = 16
	var (
		wg    sync.WaitGroup
		acked [writers][]string
		stop  = time.Now().Add(5 * time.Second)
	)
	for w := range writers {
		cl := c.Client(1 + w%3)
		wg.Go(func() {
			for i := 0; time.Now().Before(stop); i++ {
				v := fmt.Sprintf("w%02d-%06d-%s", w, i, strings.Repeat("x", 64))
				if err := cl.Put(ctx, "stress_test_topic", []byte(v)); err != nil {
					t.Errorf("writer %d: PUT %d: %v", w, i, err)
					return
				}
				acked[w] = append(acked[w], v)
			}
		})
	}
	wg.Wait()
	total := 0
	for _, a := range acked {
		total += len(a)
	}
	got := drain(t, ctx, c.Client(2), "stress_test_topic", total+10)
	checkExactlyOnceInOrder(t, got, acked[:])
	t.Logf("%d writers acknowledged %d writes in 5s, all read back", writers, total)
}

// checkExactlyOnceInOrder asserts got holds every acknowledged write once,
// nothing else, and each writer's writes in its order.
func checkExactlyOnceInOrder(t *testing.T, got []string, acked [][]string) {
	t.Helper()
	want := map[string]int{} // value -> writer
	for w, vs := range acked {
		for _, v := range vs {
			want[v] = w
		}
	}
	next := make([]int, len(acked))
	seen := map[string]bool{}
	for i, v := range got {
		if seen[v] {
			t.Fatalf("entry %d %q delivered twice", i, v)
		}
		seen[v] = true
		w, ok := want[v]
		if !ok {
			t.Fatalf("entry %d %q was never acknowledged", i, v)
		}
		if acked[w][next[w]] != v {
			t.Fatalf("entry %d %q out of order: writer %d's next acknowledged write is %q", i, v, w, acked[w][next[w]])
		}
		next[w]++
	}
	for w := range acked {
		if next[w] != len(acked[w]) {
			t.Fatalf("writer %d: %d of %d acknowledged writes read back; first missing %q",
				w, next[w], len(acked[w]), acked[w][next[w]])
		}
	}
}

// Multi-topic: 100 topics written concurrently, each read back with its
// exact count and order, then EMPTY.
func TestScenario_MultiTopic(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{MaxSegmentEntries: 10})
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	const topics, perTopic = 100, 25
	var wg sync.WaitGroup
	sem := make(chan struct{}, 20) // 20 connections at a time
	for i := range topics {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			cl := c.Client(1 + i%3)
			topic := fmt.Sprintf("stress_topic_%d", i)
			if err := cl.Register(ctx, topic); err != nil {
				t.Errorf("REGISTER %s: %v", topic, err)
				return
			}
			for j := range perTopic {
				if err := cl.Put(ctx, topic, []byte(fmt.Sprintf("seq-%06d:%s", j, strings.Repeat("x", 1004)))); err != nil {
					t.Errorf("PUT %s %d: %v", topic, j, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for i := range topics {
		topic := fmt.Sprintf("stress_topic_%d", i)
		got := drain(t, ctx, c.Client(1+(i+1)%3), topic, perTopic+1)
		if len(got) != perTopic {
			t.Fatalf("%s: read %d entries, want %d", topic, len(got), perTopic)
		}
		for j, v := range got {
			if !strings.HasPrefix(v, fmt.Sprintf("seq-%06d:", j)) || len(v) != 1015 {
				t.Fatalf("%s: entry %d = %.20q (%d bytes)", topic, j, v, len(v))
			}
		}
	}
}

// Resilience: writes continue while nodes are stopped (SIGTERM or SIGKILL)
// and restarted at random; at the end every acknowledged write is read back
// exactly once and in order. A write that failed may or may not be there
// (its outcome was unknown to the client), never twice.
func TestScenario_Resilience(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos scenario")
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	c := testcluster.New(t, testcluster.Options{MaxSegmentEntries: 20})
	ctx, cancel := context.WithTimeout(context.Background(), 240*time.Second)
	defer cancel()
	if err := c.Client(1).Register(ctx, "resilience_topic"); err != nil {
		t.Fatal(err)
	}

	var (
		mu       sync.Mutex
		acked    []string
		failed   = map[string]bool{}
		outage   time.Duration
		done     = make(chan struct{})
		chaosEnd = time.Now().Add(20 * time.Second)
	)
	go func() { // the writer: round robin over the nodes, on errors too
		defer close(done)
		var lastOK = time.Now()
		for i := 0; time.Now().Before(chaosEnd); i++ {
			v := fmt.Sprintf("msg-%06d", i)
			node := 1 + i%3
			err := putOnce(ctx, c.Node(node).ClientAddr, "resilience_topic", v)
			mu.Lock()
			if err == nil {
				acked = append(acked, v)
				outage = max(outage, time.Since(lastOK))
				lastOK = time.Now()
			} else {
				failed[v] = true
			}
			mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	}()
	for time.Now().Before(chaosEnd) {
		time.Sleep(time.Duration(1000+rng.IntN(2000)) * time.Millisecond)
		victim := 1 + rng.IntN(3)
		if rng.IntN(2) == 0 {
			t.Logf("SIGKILL node %d", victim)
			c.Kill(victim)
		} else {
			t.Logf("SIGTERM node %d", victim)
			c.Stop(victim)
		}
		time.Sleep(time.Duration(1000+rng.IntN(2000)) * time.Millisecond)
		t.Logf("restart node %d", victim)
		c.Start(victim)
	}
	<-done
	c.WaitReady(60 * time.Second)
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d writes acknowledged, %d failed, longest gap between acknowledgements %v",
		len(acked), len(failed), outage.Round(time.Millisecond))
	if len(acked) < 50 {
		t.Fatalf("only %d writes acknowledged during the chaos", len(acked))
	}
	got := drainRetry(t, ctx, c, "resilience_topic", len(acked)+len(failed)+10)
	var onlyAcked []string
	for _, v := range got {
		if !failed[v] {
			onlyAcked = append(onlyAcked, v)
		}
	}
	checkExactlyOnceInOrder(t, onlyAcked, [][]string{acked})
}

// putOnce sends one PUT on a fresh connection with a short deadline.
func putOnce(ctx context.Context, addr, topic, payload string) error {
	ctx, cancel := context.WithTimeout(ctx, 8*time.Second)
	defer cancel()
	cl, err := protocol.Dial(ctx, addr)
	if err != nil {
		return err
	}
	defer cl.Close()
	return cl.Put(ctx, topic, []byte(payload))
}

// drainRetry reads a topic to EMPTY through any node, retrying the GETs
// that fail while the cluster settles; it fails on a duplicate.
func drainRetry(t *testing.T, ctx context.Context, c *testcluster.Cluster, topic string, limit int) []string {
	t.Helper()
	var out []string
	for attempt := 0; len(out) <= limit; {
		cl, err := protocol.Dial(ctx, c.Node(1+attempt%3).ClientAddr)
		if err != nil {
			attempt++
			time.Sleep(200 * time.Millisecond)
			continue
		}
		for {
			p, ok, err := cl.Get(ctx, topic)
			if err != nil {
				var se *protocol.ServerError
				if !errors.As(err, &se) && ctx.Err() != nil {
					t.Fatalf("GET: %v", err)
				}
				t.Logf("GET after %d entries: %v (retrying)", len(out), err)
				attempt++
				if attempt > 200 {
					t.Fatalf("GET keeps failing: %v", err)
				}
				time.Sleep(250 * time.Millisecond)
				break
			}
			if !ok {
				_ = cl.Close()
				return out
			}
			out = append(out, string(p))
		}
		_ = cl.Close()
	}
	t.Fatalf("GET returned more than %d entries", limit)
	return nil
}

// Failover (rule 5): when the leader of a topic's open segment dies, the
// cluster seals that segment and opens the next on a live node within
// seconds, so writes resume; when the old leader returns it reports its
// count and every acknowledged entry is read back in order.
func TestScenario_Failover(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{MaxSegmentEntries: 1000})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cl := c.Client(1)
	if err := cl.Register(ctx, "failover_topic"); err != nil {
		t.Fatal(err)
	}
	var acked []string
	for i := range 10 {
		v := fmt.Sprintf("before-%d", i)
		if err := cl.Put(ctx, "failover_topic", []byte(v)); err != nil {
			t.Fatal(err)
		}
		acked = append(acked, v)
	}
	before := topicState(t, ctx, cl, "failover_topic")
	victim := int(before.LeaderNode)
	other := victim%3 + 1
	t.Logf("segment %d is led by node %d: killing it", before.CurrentSegment, victim)
	c.Kill(victim)

	start := time.Now()
	var resumed time.Duration
	for i := 0; time.Since(start) < 30*time.Second; i++ {
		v := fmt.Sprintf("after-%d", i)
		if err := putOnce(ctx, c.Node(other).ClientAddr, "failover_topic", v); err == nil {
			acked = append(acked, v)
			if resumed == 0 {
				resumed = time.Since(start)
			}
			if len(acked) == 20 {
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if resumed == 0 {
		t.Fatalf("writes did not resume within 30s of node %d's death", victim)
	}
	after := topicState(t, ctx, c.Client(other), "failover_topic")
	t.Logf("writes resumed %v after the kill; segment %d now led by node %d", resumed.Round(time.Millisecond), after.CurrentSegment, after.LeaderNode)
	if after.CurrentSegment <= before.CurrentSegment || after.LeaderNode == uint64(victim) {
		t.Fatalf("no failover: before %+v, after %+v", before, after)
	}

	c.Start(victim)
	c.WaitReady(60 * time.Second)
	// The old leader reports its count; then everything reads back in order.
	got := drainRetry(t, ctx, c, "failover_topic", len(acked)+5)
	equal(t, "read back after the failover", got, acked)
}
