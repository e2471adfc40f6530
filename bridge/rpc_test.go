package bridge

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Three bridges form one cluster from a single seed; every node calls every
// node (itself included) for every op, and status codes survive the trip.
func TestCluster_EveryNodeCallsEveryNode(t *testing.T) {
	checkGoroutines(t)
	hs := map[uint64]*echoHandler{}
	start := time.Now()
	bs := cluster(t, 3, func(id uint64) Handler {
		hs[id] = &echoHandler{node: id}
		return hs[id]
	})
	t.Logf("3 nodes started in %v", time.Since(start))
	ctx := testCtx(t, 20*time.Second)
	for _, from := range bs {
		for to := uint64(1); to <= 3; to++ {
			t.Run(fmt.Sprintf("%d->%d", from.cfg.NodeID, to), func(t *testing.T) {
				callStart := time.Now()
				recs := []Record{{Timestamp: 1, Value: []byte("a")}, {Timestamp: 2, Headers: []Header{{"k", "v"}}}}
				ar, err := from.Append(ctx, to, AppendRequest{Topic: "t", Segment: 1, Epoch: 9, Records: recs})
				if err != nil || ar.FirstIndex != to || ar.FirstOffset != 2 {
					t.Fatalf("Append: %+v %v", ar, err)
				}
				first := time.Since(callStart)
				rr, err := from.Read(ctx, to, ReadRequest{Topic: "t", Segment: 3, Index: 4, MaxEntries: 10, MaxBytes: 1 << 20})
				if err != nil || rr.Count != to || !rr.Sealed || len(rr.Entries) != 1 {
					t.Fatalf("Read: %+v %v", rr, err)
				}
				if e := rr.Entries[0]; e.Segment != 3 || e.Index != 4 || e.Offset != to || string(e.Value) != "v" ||
					len(e.Headers) != 1 || e.Headers[0] != (Header{"topic", "t"}) {
					t.Fatalf("Read entry: %+v", e)
				}
				pr, err := from.Propose(ctx, to, ProposeRequest{Command: []byte("cmd")})
				if err != nil || pr.Index != to || string(pr.Result) != "ok:cmd" {
					t.Fatalf("Propose: %+v %v", pr, err)
				}
				ack, err := from.Heartbeat(ctx, to, Heartbeat{NodeID: from.cfg.NodeID, AppliedIndex: 41, SentUnixNano: 5})
				if err != nil || ack.LeaderID != to || ack.Term != 42 {
					t.Fatalf("Heartbeat: %+v %v", ack, err)
				}
				t.Logf("first call %v, all four %v", first, time.Since(callStart))
			})
		}
	}
	// Codes survive the trip, from node 3 to node 2 (a gossiped route).
	codes := []struct {
		code     Code
		sentinel error
	}{
		{CodeNotLeader, ErrNotLeader}, {CodeEpochMismatch, ErrEpochMismatch}, {CodeSealed, ErrSealed},
		{CodeUnknownTopic, ErrUnknownTopic}, {CodeOutOfRange, ErrOutOfRange}, {CodeCorrupt, ErrCorrupt},
		{CodeInternal, ErrInternal}, {CodeBadRequest, ErrBadRequest}, {CodeTooLarge, ErrTooLarge},
	}
	for _, c := range codes {
		topic := fmt.Sprintf("code-%d", c.code)
		_, err := bs[2].Append(ctx, 2, AppendRequest{Topic: topic})
		var re *RemoteError
		if !errors.Is(err, c.sentinel) || !errors.As(err, &re) || re.Code != c.code || re.Message != "topic "+topic {
			t.Errorf("%v: got %v", c.code, err)
		}
		for _, other := range codes {
			if other.code != c.code && errors.Is(err, other.sentinel) {
				t.Errorf("%v: also matches %v", c.code, other.sentinel)
			}
		}
	}
	_, err := bs[2].Read(ctx, 2, ReadRequest{Topic: "plain"})
	if !errors.Is(err, ErrInternal) || !strings.Contains(err.Error(), "disk on fire") {
		t.Errorf("plain error: %v", err)
	}
	// Not-leader errors are not retried: one handler call per Append.
	before := hs[2].appends.Load()
	_, _ = bs[2].Append(ctx, 2, AppendRequest{Topic: fmt.Sprintf("code-%d", CodeNotLeader)})
	if n := hs[2].appends.Load() - before; n != 1 {
		t.Errorf("not-leader append ran %d times", n)
	}
}

// A call to a node that has just started is retried until its route
// interest reaches the caller.
func TestCall_RetriesUntilInterestPropagates(t *testing.T) {
	checkGoroutines(t)
	b1 := newBridge(t, 1, &echoHandler{node: 1}, nil)
	for id := uint64(2); id <= 4; id++ {
		bn := newBridge(t, id, &echoHandler{node: id}, func(c *Config) { c.Routes = []string{b1.RouteURL()} })
		start := time.Now()
		ack, err := b1.Heartbeat(testCtx(t, 10*time.Second), id, Heartbeat{NodeID: 1})
		if err != nil || ack.LeaderID != id {
			t.Fatalf("1->%d right after Start: %+v %v", id, ack, err)
		}
		t.Logf("1->%d answered %v after the callee's Start returned", id, time.Since(start))
		start = time.Now()
		ack, err = bn.Heartbeat(testCtx(t, 10*time.Second), 1, Heartbeat{NodeID: id})
		if err != nil || ack.LeaderID != 1 {
			t.Fatalf("%d->1: %+v %v", id, ack, err)
		}
		t.Logf("%d->1 answered in %v", id, time.Since(start))
	}
}

// A call to a node that is down fails within its ctx with a clear error.
func TestCall_NodeDown(t *testing.T) {
	checkGoroutines(t)
	b1 := newBridge(t, 1, &echoHandler{node: 1}, func(c *Config) { c.RequestTimeout = 200 * time.Millisecond })
	b2 := newBridge(t, 2, &echoHandler{node: 2}, func(c *Config) { c.Routes = []string{b1.RouteURL()} })
	bs := []*Bridge{b1, b2}
	if _, err := bs[0].Heartbeat(testCtx(t, 10*time.Second), 2, Heartbeat{}); err != nil {
		t.Fatal(err)
	}
	// Right after the peer stops, a request may still be routed to it (the
	// route's close has not been processed yet) and time out; later ones
	// find no responders.
	shutdown(t, bs[1])
	for _, node := range []uint64{2, 99} {
		start := time.Now()
		err := eventuallyErr(t, 500*time.Millisecond, func(ctx context.Context) error {
			_, err := bs[0].Append(ctx, node, AppendRequest{Topic: "t"})
			return err
		}, ErrUnreachable, context.DeadlineExceeded)
		t.Logf("node %d: %v after %v", node, err, time.Since(start))
	}
}

// RetryWhile stops a call whose attempts all found no responder as soon
// as it says so (ErrAbandoned); a call one of whose attempts timed out, and
// so may have been executed, keeps retrying to learn the outcome.
func TestCall_RetryWhile(t *testing.T) {
	checkGoroutines(t)
	h := &echoHandler{node: 1}
	h.onAppend = func(ctx context.Context, req AppendRequest) (AppendResponse, error) {
		time.Sleep(400 * time.Millisecond) // longer than an attempt may wait
		return AppendResponse{FirstOffset: 7}, nil
	}
	b := newBridge(t, 1, h, func(c *Config) { c.RequestTimeout = 200 * time.Millisecond })
	var asked atomic.Int32
	stop := RetryWhile(func() bool { asked.Add(1); return false })

	// Nobody listens for node 99: abandoned after the first attempt.
	start := time.Now()
	_, err := b.Append(testCtx(t, 10*time.Second), 99, AppendRequest{Topic: "t"}, stop)
	if !errors.Is(err, ErrAbandoned) || !errors.Is(err, ErrUnreachable) || asked.Load() != 1 {
		t.Fatalf("append to nobody: %v after %v (asked %d); want ErrAbandoned after one attempt", err, time.Since(start), asked.Load())
	}
	// Node 1 takes the first attempt and does not answer in time: the call
	// goes on, and a retry (the same request id) gets the answer.
	resp, err := b.Append(testCtx(t, 10*time.Second), 1, AppendRequest{Topic: "t"}, stop)
	if err != nil || resp.FirstOffset != 7 {
		t.Fatalf("append after a timed-out attempt: %+v, %v; want the retry's answer", resp, err)
	}
}

// A node with no handler answers Unavailable; the caller retries until one
// is set.
func TestCall_UnavailableUntilHandlerSet(t *testing.T) {
	bs := cluster(t, 2, func(id uint64) Handler {
		if id == 2 {
			return nil
		}
		return &echoHandler{node: id}
	})
	eventuallyErr(t, 300*time.Millisecond, func(ctx context.Context) error {
		_, err := bs[0].Heartbeat(ctx, 2, Heartbeat{})
		return err
	}, ErrUnavailable, context.DeadlineExceeded)
	time.AfterFunc(100*time.Millisecond, func() { bs[1].SetHandler(&echoHandler{node: 2}) })
	if ack, err := bs[0].Heartbeat(testCtx(t, 10*time.Second), 2, Heartbeat{}); err != nil || ack.LeaderID != 2 {
		t.Fatalf("after SetHandler: %+v %v", ack, err)
	}
}

// Requests beyond MaxConcurrent are refused with Unavailable and retried.
func TestCall_Overloaded(t *testing.T) {
	h := &echoHandler{node: 1}
	release := make(chan struct{})
	entered := make(chan struct{}, 10)
	h.onRead = func(ctx context.Context, req ReadRequest) (ReadResponse, error) {
		entered <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return ReadResponse{Count: 1}, nil
	}
	b := newBridge(t, 1, h, func(c *Config) { c.MaxConcurrent = 1; c.RequestTimeout = 5 * time.Second })
	first := make(chan error, 1)
	go func() {
		_, err := b.Read(testCtx(t, 10*time.Second), 1, ReadRequest{})
		first <- err
	}()
	<-entered
	err := eventuallyErr(t, 200*time.Millisecond, func(ctx context.Context) error {
		_, err := b.Read(ctx, 1, ReadRequest{})
		return err
	}, ErrUnavailable)
	if !strings.Contains(err.Error(), "overloaded") {
		t.Fatalf("second call: %v", err)
	}
	time.AfterFunc(100*time.Millisecond, func() { close(release) })
	if _, err := b.Read(testCtx(t, 10*time.Second), 1, ReadRequest{}); err != nil {
		t.Fatalf("after release: %v", err)
	}
	if err := <-first; err != nil {
		t.Fatalf("first call: %v", err)
	}
}

// SetRoutes joins a bridge that started without routes into a running
// cluster.
func TestSetRoutes_JoinsRunningCluster(t *testing.T) {
	checkGoroutines(t)
	bs := cluster(t, 2, func(id uint64) Handler { return &echoHandler{node: id} })
	b3 := newBridge(t, 3, &echoHandler{node: 3}, nil)
	eventuallyErr(t, 200*time.Millisecond, func(ctx context.Context) error {
		_, err := b3.Heartbeat(ctx, 1, Heartbeat{})
		return err
	}, ErrUnreachable)
	start := time.Now()
	if err := b3.SetRoutes([]string{bs[0].RouteURL(), b3.RouteURL()}); err != nil {
		t.Fatalf("SetRoutes: %v", err)
	}
	for _, c := range []struct {
		from *Bridge
		to   uint64
	}{{b3, 1}, {b3, 2}, {bs[0], 3}, {bs[1], 3}} {
		ack, err := c.from.Heartbeat(testCtx(t, 10*time.Second), c.to, Heartbeat{})
		if err != nil || ack.LeaderID != c.to {
			t.Fatalf("%d->%d: %+v %v", c.from.cfg.NodeID, c.to, ack, err)
		}
		t.Logf("%d->%d answered %v after SetRoutes", c.from.cfg.NodeID, c.to, time.Since(start))
	}
	// Dropping a seed closes the route that was dialled to it, and neither
	// side redials it (nats-server reload semantics); the route that gossip
	// made to node 2 stays.
	if err := b3.SetRoutes(nil); err != nil {
		t.Fatalf("SetRoutes(nil): %v", err)
	}
	if _, err := b3.Heartbeat(testCtx(t, 5*time.Second), 2, Heartbeat{}); err != nil {
		t.Fatalf("after SetRoutes(nil): 3->2: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err := b3.Heartbeat(ctx, 1, Heartbeat{})
	cancel()
	t.Logf("after SetRoutes(nil): 3->1: %v", err)
}

// SetRoutes before Start sets the seeds Start uses.
func TestSetRoutes_BeforeStart(t *testing.T) {
	b1 := newBridge(t, 1, &echoHandler{node: 1}, nil)
	b2, err := New(Config{NodeID: 2, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	b2.SetHandler(&echoHandler{node: 2})
	if err := b2.SetRoutes([]string{b1.RouteURL()}); err != nil {
		t.Fatal(err)
	}
	if err := b2.Start(testCtx(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdown(t, b2) })
	if _, err := b1.Heartbeat(testCtx(t, 10*time.Second), 2, Heartbeat{}); err != nil {
		t.Fatal(err)
	}
	if err := b2.SetRoutes([]string{"bogus"}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("bad route: %v", err)
	}
}

// A request larger than MaxPayload fails at once; a response that would be
// too large comes back as CodeTooLarge.
func TestCall_TooLarge(t *testing.T) {
	h := &echoHandler{node: 1}
	h.onRead = func(ctx context.Context, req ReadRequest) (ReadResponse, error) {
		if req.MaxBytes != 64<<10 {
			return ReadResponse{}, fmt.Errorf("MaxBytes %d not capped", req.MaxBytes)
		}
		return ReadResponse{Entries: []Entry{{Record: Record{Value: make([]byte, 200<<10)}}}}, nil
	}
	b := newBridge(t, 1, h, func(c *Config) { c.MaxPayload = 128 << 10 })
	_, err := b.Append(testCtx(t, 5*time.Second), 1, AppendRequest{Records: []Record{{Value: make([]byte, 200<<10)}}})
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("large request: %v", err)
	}
	_, err = b.Read(testCtx(t, 5*time.Second), 1, ReadRequest{MaxBytes: 1 << 30})
	var re *RemoteError
	if !errors.As(err, &re) || re.Code != CodeTooLarge {
		t.Fatalf("large response: %v", err)
	}
}

// A malformed request is answered with CodeBadRequest, not dropped.
func TestServe_BadRequest(t *testing.T) {
	b := newBridge(t, 1, &echoHandler{node: 1}, nil)
	for _, data := range [][]byte{nil, {9}, {wireVersion, byte(opAppend), 0, 1}, {wireVersion, 77, 0}} {
		msg, err := b.Conn().Request(rpcSubject(1), data, 2*time.Second)
		if err != nil {
			t.Fatalf("%x: %v", data, err)
		}
		resp, err := decodeResponse(msg.Data)
		if err != nil || resp.code != CodeBadRequest {
			t.Fatalf("%x: %+v %v", data, resp, err)
		}
	}
}
