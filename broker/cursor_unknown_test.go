package broker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walrus-edge/walrus/bridge"
	"github.com/walrus-edge/walrus/broker"
	"github.com/walrus-edge/walrus/broker/protocol"
	md "github.com/walrus-edge/walrus/cluster"
	"github.com/walrus-edge/walrus/storage"
)

// The tests below reproduce what a stalled NATS route did to a GET in the
// docker partition test: the cursor move the GET forwarded to the Raft
// leader applied, but the leader's answer came back after the GET's
// deadline. They hold the answer with the afterPropose test hook, on the
// Raft leader after the move has applied (the real proposal, through the
// real bridge and Raft), until the test releases it.

// moveHold holds the Raft leader's answers to the cursor moves hold
// selects until release is called (at the latest when the test ends,
// before the nodes shut down: see startCluster). held receives each move
// held.
type moveHold struct {
	held    chan md.Command
	release func()
	hook    func(md.Command, md.Result)
}

func newMoveHold(t *testing.T, hold func(md.Command) bool) *moveHold {
	released := make(chan struct{})
	var once sync.Once
	h := &moveHold{held: make(chan md.Command, 16)}
	h.release = func() { once.Do(func() { close(released) }) }
	h.hook = func(cmd md.Command, _ md.Result) {
		if cmd.Type != md.CmdAdvanceCursor || !hold(cmd) {
			return
		}
		select {
		case h.held <- cmd:
		default:
		}
		<-released
	}
	return h
}

// firstMoveOn selects the first cursor move on topic.
func firstMoveOn(topic string) func(md.Command) bool {
	var done atomic.Bool
	return func(cmd md.Command) bool {
		return cmd.Topic == topic && done.CompareAndSwap(false, true)
	}
}

// startCluster starts three nodes with the hold's hook and requestTimeout,
// registers topic and writes values to it; it returns the cluster, the
// Raft leader and a follower.
func startCluster(t *testing.T, ctx context.Context, h *moveHold, requestTimeout time.Duration, topic string, values []string) (*cluster, *node, *node) {
	t.Helper()
	c := newCluster(t, 3, func(cfg *broker.Config) {
		cfg.RequestTimeout = requestTimeout
		broker.SetAfterPropose(cfg, h.hook)
	})
	// Registered after newCluster's, so it runs before the nodes shut down
	// (which waits for the held handlers).
	t.Cleanup(h.release)
	leader := c.raftLeader()
	follower := c.node(1 + leader.id%3)
	if err := leader.srv.Register(ctx, topic); err != nil {
		t.Fatal(err)
	}
	recs := make([]storage.Record, len(values))
	for i, v := range values {
		recs[i] = storage.Record{Value: []byte(v)}
	}
	if _, err := leader.srv.Put(ctx, topic, recs); err != nil {
		t.Fatal(err)
	}
	return c, leader, follower
}

// waitHeld waits until the hold holds a move.
func (h *moveHold) waitHeld(t *testing.T) md.Command {
	t.Helper()
	select {
	case cmd := <-h.held:
		return cmd
	case <-time.After(20 * time.Second):
		t.Fatal("no cursor move reached the hold")
		return md.Command{}
	}
}

// TestGetUnknownOutcomeDelivers is the partition test's bug: a GET through
// a follower whose cursor move applied but was answered only after the
// GET's deadline. The GET must deliver the entry it consumed (proposing the
// same move again, whose token the FSM recognises), not answer ERR while
// the cursor has moved past the entry. Meanwhile GETs through the two other
// nodes go on: every entry is delivered exactly once.
func TestGetUnknownOutcomeDelivers(t *testing.T) {
	const n, rt = 20, 2 * time.Second
	const topic = "stalled"
	ctx := testCtx(t, 60*time.Second)
	h := newMoveHold(t, firstMoveOn(topic))
	want := seq("w", n)
	c, leader, follower := startCluster(t, ctx, h, rt, topic, want)

	var (
		mu        sync.Mutex
		delivered = map[string][]uint64{} // value -> the nodes that delivered it
		failures  []string
		wg        sync.WaitGroup
	)
	consume := func(s *broker.Server) {
		for range 2 * n {
			e, ok, err := s.Get(ctx, topic)
			mu.Lock()
			switch {
			case err != nil:
				failures = append(failures, fmt.Sprintf("node %d: Get: %v", s.NodeID(), err))
			case ok:
				delivered[string(e.Value)] = append(delivered[string(e.Value)], s.NodeID())
			}
			mu.Unlock()
			if err == nil && !ok {
				return
			}
		}
	}

	// The follower's first GET reads w-000 and proposes the move past it;
	// the move applies, its answer is held.
	type result struct {
		e    bridge.Entry
		ok   bool
		err  error
		took time.Duration
	}
	first := make(chan result, 1)
	go func() {
		start := time.Now()
		e, ok, err := follower.srv.Get(ctx, topic)
		first <- result{e, ok, err, time.Since(start)}
	}()
	held := h.waitHeld(t)
	// The other nodes consume from the moved cursor meanwhile.
	for _, n := range c.running() {
		if n != follower {
			wg.Go(func() { consume(n.srv) })
		}
	}
	r := <-first
	h.release() // the held answer now goes to a requester that gave up
	t.Logf("first GET through node %d (raft leader %d): %q ok=%v err=%v after %v (held move %s from %d)",
		follower.id, leader.id, r.e.Value, r.ok, r.err, r.took.Round(time.Millisecond), held.Token, held.From)
	if r.took < rt*9/10 {
		t.Errorf("the first GET took %v, less than the request timeout %v: the held answer did not make its first attempt time out", r.took, rt)
	}
	switch {
	case r.err != nil:
		failures = append(failures, fmt.Sprintf("node %d: first GET: %v", follower.id, r.err))
	case !r.ok:
		t.Errorf("the first GET answered EMPTY")
	default:
		if r.e.Offset != held.From || string(r.e.Value) != want[0] {
			t.Errorf("the first GET delivered %q at offset %d, want %q, the entry its held move consumed", r.e.Value, r.e.Offset, want[0])
		}
		delivered[string(r.e.Value)] = append(delivered[string(r.e.Value)], follower.id)
	}
	wg.Go(func() { consume(follower.srv) })
	wg.Wait()

	for _, f := range failures {
		t.Error(f)
	}
	for _, v := range want {
		switch nodes := delivered[v]; {
		case len(nodes) == 0:
			t.Errorf("%s never delivered", v)
		case len(nodes) > 1:
			t.Errorf("%s delivered %d times (nodes %v)", v, len(nodes), nodes)
		}
	}
	if len(delivered) != n {
		t.Errorf("%d distinct entries delivered, want %d", len(delivered), n)
	}
	if st := stateOf(t, leader.srv, topic); st.Cursor != n {
		t.Errorf("cursor %d after draining %d entries", st.Cursor, n)
	}
}

// TestGetUnknownOutcomeReported: when no answer comes within the bound
// (the leader's answers to the move and to every replay of it are held), a
// TCP GET answers "ERR outcome unknown: ..." after about two request
// timeouts, not an ERR that suggests nothing happened; the entry is indeed
// consumed, and the next GET gets the next one.
func TestGetUnknownOutcomeReported(t *testing.T) {
	const rt = 2 * time.Second
	const topic = "unanswered"
	ctx := testCtx(t, 60*time.Second)
	var token atomic.Value // the held move's token: its replays are held too
	h := newMoveHold(t, func(cmd md.Command) bool {
		if cmd.Topic != topic {
			return false
		}
		token.CompareAndSwap(nil, cmd.Token)
		return token.Load() == cmd.Token
	})
	_, leader, follower := startCluster(t, ctx, h, rt, topic, seq("u", 2))

	cl := dial(t, follower.srv)
	start := time.Now()
	p, ok, err := cl.Get(ctx, topic)
	took := time.Since(start)
	t.Logf("GET through node %d: %q %v %v after %v", follower.id, p, ok, err, took.Round(time.Millisecond))
	var se *protocol.ServerError
	if !errors.As(err, &se) || !strings.HasPrefix(se.Message, "outcome unknown: ") ||
		!strings.Contains(se.Message, "may have been consumed") {
		t.Fatalf("GET = %q, %v, %v; want ERR outcome unknown: ...", p, ok, err)
	}
	if took < 2*rt*9/10 || took > 3*rt {
		t.Errorf("GET answered after %v; want about twice the request timeout %v", took, rt)
	}
	if len(h.held) == 0 {
		t.Error("no replay of the move reached the raft leader")
	}
	h.release()
	if p, ok, err := cl.Get(ctx, topic); err != nil || !ok || string(p) != "u-001" {
		t.Fatalf("next GET = %q, %v, %v; want u-001 (u-000 was consumed)", p, ok, err)
	}
	if st := stateOf(t, leader.srv, topic); st.Cursor != 2 {
		t.Errorf("cursor %d, want 2", st.Cursor)
	}
}

// TestGetUnknownOutcomeForgotten: the FSM remembers the tokens of a topic's
// last 64 cursor moves. A replay that comes after more moves than that
// cannot be judged: the GET must say the outcome is unknown, not take the
// move for one that lost the race to another GET (which would consume the
// entry silently). The GET's first attempt ends when its context is
// cancelled, while its answer is held and 70 GETs through the leader move
// the cursor on.
func TestGetUnknownOutcomeForgotten(t *testing.T) {
	const n = 71
	const topic = "forgotten"
	ctx := testCtx(t, 90*time.Second)
	h := newMoveHold(t, firstMoveOn(topic))
	want := seq("f", n)
	// A long request timeout: only the cancellation ends the first attempt.
	_, leader, follower := startCluster(t, ctx, h, 30*time.Second, topic, want)

	gctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		e   bridge.Entry
		ok  bool
		err error
	}
	first := make(chan result, 1)
	go func() {
		e, ok, err := follower.srv.Get(gctx, topic)
		first <- result{e, ok, err}
	}()
	h.waitHeld(t)
	for i := 1; i < n; i++ {
		e, ok, err := leader.srv.Get(ctx, topic)
		if err != nil || !ok || string(e.Value) != want[i] {
			t.Fatalf("GET %d through the leader = %q, %v, %v; want %s", i, e.Value, ok, err, want[i])
		}
	}
	cancel()
	var r result
	select {
	case r = <-first:
	case <-time.After(20 * time.Second):
		t.Fatal("the cancelled GET did not answer")
	}
	h.release()
	t.Logf("cancelled GET through node %d: %q %v %v", follower.id, r.e.Value, r.ok, r.err)
	if !errors.Is(r.err, bridge.ErrOutcomeUnknown) {
		t.Fatalf("cancelled GET = %q, %v, %v; want outcome unknown (f-000 was consumed)", r.e.Value, r.ok, r.err)
	}
	if _, ok, err := leader.srv.Get(ctx, topic); err != nil || ok {
		t.Fatalf("GET after draining = %v, %v; want EMPTY", ok, err)
	}
}
