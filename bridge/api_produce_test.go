package bridge

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// gatedBackend stores produced records in memory; Produce blocks while the
// gate is closed. Only Produce is used by these tests.
type gatedBackend struct {
	Backend // nil: any other call panics, which fails the test

	gate chan struct{} // Produce waits until it is closed
	mu   sync.Mutex
	recs []Record
}

func (g *gatedBackend) Produce(ctx context.Context, _ string, recs []Record) ([]Position, error) {
	select {
	case <-g.gate:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]Position, len(recs))
	for i, r := range recs {
		out[i] = Position{Segment: 1, Offset: uint64(len(g.recs))}
		g.recs = append(g.recs, r)
	}
	return out, nil
}

func (g *gatedBackend) Recent(context.Context, string, time.Time, int, int64) ([]Entry, error) {
	return nil, nil
}

func (g *gatedBackend) OpenLeader(string) (uint64, bool) { return 1, true }

func (g *gatedBackend) stored() []Record {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]Record(nil), g.recs...)
}

// startTestAPI starts the public API on b with cfg and backend, stopped at
// the end of the test.
func startTestAPI(t *testing.T, b *Bridge, cfg APIConfig, backend Backend) *API {
	t.Helper()
	cfg.Logger = testLogger(t)
	api, err := b.StartAPI(cfg, backend)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := api.Stop(ctx); err != nil {
			t.Errorf("stop api: %v", err)
		}
	})
	return api
}

// lead makes api lead topics and waits until this node's server routes
// their publish subjects: SetLeading subscribes asynchronously, and a
// request sent before the server has the subscription gets no responders.
func lead(t *testing.T, api *API, topics ...string) {
	t.Helper()
	led := map[string][]string{}
	subjects := make([]string, 0, len(topics))
	for _, topic := range topics {
		led[topic] = nil
		subjects = append(subjects, api.cfg.Prefix+".pub."+topic)
	}
	api.SetLeading(led)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if !api.waitLocalInterest(ctx, subjects) {
		t.Fatalf("server does not route %v", subjects)
	}
}

// A burst of plain publishes larger than the topic's queue, sent while
// storage is stalled, is held back rather than dropped: a full queue holds
// the subscription's delivery until the producer takes a batch, and every
// message is then stored, in order.
func TestAPI_FullQueueHoldsPlainPublishes(t *testing.T) {
	b := newBridge(t, 1, nil, nil)
	backend := &gatedBackend{gate: make(chan struct{})}
	var dmu sync.Mutex
	drops := map[string]int{}
	api := startTestAPI(t, b, APIConfig{
		RequestTimeout: 30 * time.Second, // the stall below must not time the wait out
		Dropped: func(reason string, n int) {
			dmu.Lock()
			drops[reason] += n
			dmu.Unlock()
		},
	}, backend)
	lead(t, api, "burst")

	nc, err := nats.Connect(b.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	const n = 3 * maxQueueEntries
	for i := range n {
		if err := nc.Publish("walrus.pub.burst", fmt.Appendf(nil, "m-%06d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// Storage is stalled: the queue fills up to its limit and stays there.
	deadline := time.Now().Add(20 * time.Second)
	for api.queued("burst") < maxQueueEntries {
		if time.Now().After(deadline) {
			t.Fatalf("queue holds %d messages, want %d", api.queued("burst"), maxQueueEntries)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if q := api.queued("burst"); q != maxQueueEntries {
		t.Fatalf("queue holds %d messages, more than its limit %d", q, maxQueueEntries)
	}
	close(backend.gate)
	for len(backend.stored()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d stored", len(backend.stored()), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for i, r := range backend.stored() {
		if want := fmt.Sprintf("m-%06d", i); string(r.Value) != want {
			t.Fatalf("entry %d is %q, want %q", i, r.Value, want)
		}
	}
	dmu.Lock()
	defer dmu.Unlock()
	if len(drops) != 0 {
		t.Fatalf("dropped: %v", drops)
	}
}

// A topic's deduplication window outlives its producer goroutine's idle
// exit: a retry after a quiet spell longer than the idle time, but within
// the window, is still recognised.
func TestAPI_DedupOutlivesIdleProducer(t *testing.T) {
	b := newBridge(t, 1, nil, nil)
	backend := &gatedBackend{gate: make(chan struct{})}
	close(backend.gate)
	api := startTestAPI(t, b, APIConfig{DedupWindow: time.Minute}, backend)
	api.idleAfter = 20 * time.Millisecond // before any producer starts
	lead(t, api, "quiet")
	nc, err := nats.Connect(b.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	send := func() string {
		m := nats.NewMsg("walrus.pub.quiet")
		m.Header.Set(HeaderMsgID, "order-1")
		m.Data = []byte("x")
		r, err := nc.RequestMsg(m, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return string(r.Data)
	}
	if got, want := send(), `{"topic":"quiet","segment":1,"offset":0}`; got != want {
		t.Fatalf("first copy: %s, want %s", got, want)
	}
	time.Sleep(10 * api.idleAfter) // the quiet spell under test
	if got, want := send(), `{"topic":"quiet","segment":1,"offset":0,"duplicate":true}`; got != want {
		t.Fatalf("retry after a quiet spell: %s, want %s", got, want)
	}
	if n := len(backend.stored()); n != 1 {
		t.Fatalf("%d entries stored, want 1", n)
	}
}
