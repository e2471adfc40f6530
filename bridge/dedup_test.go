package bridge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The first attempt's reply is lost (the handler outlives the per-attempt
// timeout); the retry carries the same id and gets the first result without
// a second handler call.
func TestAppend_RetryRunsHandlerOnce(t *testing.T) {
	checkGoroutines(t)
	var calls atomic.Int64
	handlers := func(id uint64) Handler {
		h := &echoHandler{node: id}
		h.onAppend = func(ctx context.Context, req AppendRequest) (AppendResponse, error) {
			n := calls.Add(1)
			time.Sleep(400 * time.Millisecond) // past the 100ms per-attempt timeout
			return AppendResponse{FirstIndex: uint64(n), FirstOffset: 42}, nil
		}
		return h
	}
	b1 := newBridge(t, 1, handlers(1), func(c *Config) { c.RequestTimeout = 100 * time.Millisecond })
	b2 := newBridge(t, 2, handlers(2), func(c *Config) {
		c.RequestTimeout = 100 * time.Millisecond
		c.Routes = []string{b1.RouteURL()}
	})
	if _, err := b2.Heartbeat(testCtx(t, 5*time.Second), 1, Heartbeat{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resp, err := b2.Append(testCtx(t, 5*time.Second), 1, AppendRequest{Topic: "t", Records: []Record{{Value: []byte("x")}}})
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	if resp.FirstIndex != 1 || resp.FirstOffset != 42 {
		t.Fatalf("Append: %+v, want the first call's result", resp)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("handler ran %d times", n)
	}
	t.Logf("answered after %v (attempts timed out after 100ms each)", time.Since(start))
	// A new Append is a new id: it runs again.
	if resp, err := b2.Append(testCtx(t, 5*time.Second), 1, AppendRequest{Topic: "t"}); err != nil || resp.FirstIndex != 2 {
		t.Fatalf("second Append: %+v %v", resp, err)
	}
}

// A duplicate that arrives after the first copy finished is answered from
// memory; concurrent duplicates wait for the running copy.
func TestCall_Duplicates(t *testing.T) {
	var calls atomic.Int64
	h := &echoHandler{node: 1}
	h.onAppend = func(ctx context.Context, req AppendRequest) (AppendResponse, error) {
		n := calls.Add(1)
		time.Sleep(100 * time.Millisecond)
		return AppendResponse{FirstIndex: uint64(n)}, nil
	}
	b := newBridge(t, 1, h, nil)
	ctx := testCtx(t, 10*time.Second)

	id := newRequestID()
	var wg sync.WaitGroup
	results := make([]uint64, 8)
	errs := make([]error, 8)
	for i := range results {
		wg.Go(func() {
			resp, err := b.call(ctx, 1, &request{op: opAppend, id: id, append: AppendRequest{Topic: "t"}})
			errs[i] = err
			if err == nil {
				results[i] = resp.append.FirstIndex
			}
		})
	}
	wg.Wait()
	for i := range results {
		if errs[i] != nil || results[i] != 1 {
			t.Fatalf("concurrent copy %d: %d %v", i, results[i], errs[i])
		}
	}
	resp, err := b.call(ctx, 1, &request{op: opAppend, id: id, append: AppendRequest{Topic: "t"}})
	if err != nil || resp.append.FirstIndex != 1 {
		t.Fatalf("late copy: %+v %v", resp, err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("handler ran %d times for one id", n)
	}
	// The same id under another op is another request.
	if _, err := b.call(ctx, 1, &request{op: opPropose, id: id}); err != nil {
		t.Fatal(err)
	}
}

// An Unavailable outcome is not remembered: the retry runs the handler
// again. Other errors are remembered like results.
func TestCall_UnavailableNotRemembered(t *testing.T) {
	var calls atomic.Int64
	h := &echoHandler{node: 1}
	h.onAppend = func(ctx context.Context, req AppendRequest) (AppendResponse, error) {
		n := calls.Add(1)
		if req.Topic == "unavailable-once" && n == 1 {
			return AppendResponse{}, Errorf(CodeUnavailable, "not yet")
		}
		if req.Topic == "sealed" {
			return AppendResponse{}, fmt.Errorf("append: %w", ErrSealed)
		}
		return AppendResponse{FirstIndex: uint64(n)}, nil
	}
	b := newBridge(t, 1, h, nil)
	ctx := testCtx(t, 10*time.Second)
	resp, err := b.Append(ctx, 1, AppendRequest{Topic: "unavailable-once"})
	if err != nil || resp.FirstIndex != 2 || calls.Load() != 2 {
		t.Fatalf("Append: %+v %v, %d calls", resp, err, calls.Load())
	}
	id := newRequestID()
	for range 2 {
		_, err := b.call(ctx, 1, &request{op: opAppend, id: id, append: AppendRequest{Topic: "sealed"}})
		if !errors.Is(err, ErrSealed) {
			t.Fatalf("sealed: %v", err)
		}
	}
	if n := calls.Load(); n != 3 {
		t.Fatalf("%d calls, want 3", n)
	}
}

func TestDedup_Memory(t *testing.T) {
	now := time.Unix(1000, 0)
	d := newDedup(time.Minute, 3)
	d.now = func() time.Time { return now }

	e, resp := d.begin("a", "r1")
	if e == nil || resp != nil {
		t.Fatal("new id not owned")
	}
	if e2, resp := d.begin("a", "r2"); e2 != nil || resp != nil {
		t.Fatal("running id not queued")
	}
	if e3, _ := d.begin("a", "r3"); e3 != nil {
		t.Fatal("running id owned twice")
	}
	waiters := d.finish(e, []byte("A"), true)
	if len(waiters) != 2 || waiters[0] != "r2" || waiters[1] != "r3" {
		t.Fatalf("waiters %v", waiters)
	}
	if _, resp := d.begin("a", "r4"); !bytes.Equal(resp, []byte("A")) {
		t.Fatalf("done id answered %q", resp)
	}

	// Not remembered: the next copy owns it again.
	e, _ = d.begin("b", "r")
	d.finish(e, []byte("B"), false)
	if e, _ = d.begin("b", "r"); e == nil {
		t.Fatal("forgotten id not owned")
	}
	d.finish(e, []byte("B"), true)

	// Bounded by count: a, b, c, then d evicts a.
	e, _ = d.begin("c", "r")
	d.finish(e, []byte("C"), true)
	e, _ = d.begin("d", "r")
	d.finish(e, []byte("D"), true)
	if n := d.len(); n != 3 {
		t.Fatalf("%d entries, want 3", n)
	}
	if e, _ := d.begin("a", "r"); e == nil {
		t.Fatal("evicted id still remembered")
	}

	// Bounded by time.
	now = now.Add(time.Minute)
	if e, _ := d.begin("c", "r"); e == nil {
		t.Fatal("expired id still remembered")
	}
	if n := d.len(); n != 1 {
		t.Fatalf("%d entries after expiry, want 1", n)
	}
}

// A running entry forgotten by the window still answers its waiters.
func TestDedup_ForgottenWhileRunning(t *testing.T) {
	now := time.Unix(1000, 0)
	d := newDedup(time.Second, 10)
	d.now = func() time.Time { return now }
	e, _ := d.begin("a", "r1")
	d.begin("a", "r2")
	now = now.Add(2 * time.Second)
	if e2, _ := d.begin("a", "r3"); e2 == nil {
		t.Fatal("expired running id not re-owned")
	}
	if w := d.finish(e, []byte("A"), true); len(w) != 1 || w[0] != "r2" {
		t.Fatalf("waiters %v", w)
	}
	if n := d.len(); n != 1 {
		t.Fatalf("%d entries", n)
	}
}
