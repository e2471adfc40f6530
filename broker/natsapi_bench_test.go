package broker_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/walrus-edge/walrus/broker"
	"github.com/walrus-edge/walrus/broker/protocol"
	"github.com/walrus-edge/walrus/tests/freeport"
)

// BenchmarkProduce measures produce throughput on one in-process node with
// real storage (b.TempDir(), fsync "always", the default), over NATS and
// over the native TCP protocol:
//
//	go test -run '^$' -bench BenchmarkProduce -benchtime 2s ./broker/
//
// Every client connects over the node's real TCP listeners, like a client
// in another process (never the NATS in-process connection). Each round of
// each sub-benchmark (the framework runs a sub-benchmark several times with
// growing b.N) appends b.N entries of 100 bytes to a fresh topic, so its
// offsets are 0..b.N-1, and checks afterwards that the topic holds exactly
// b.N entries: a benchmark that silently measured failures fails instead.
// ns/op and MB/s are per stored entry; entries/s is b.N over the timed
// part.
//
//   - nats-request/conc=N: N goroutines share one NATS connection, each
//     sending a request to walrus.pub.<topic> and waiting for its ack
//     (decoded and checked) before sending the next. This is what a real
//     service does: one connection per process, many concurrent callers of
//     nc.Request, each needing to know its entry is durable. Every offset
//     0..b.N-1 must be acked exactly once.
//   - nats-publish: one goroutine publishes b.N plain (fire-and-forget)
//     messages on one connection, then waits until the topic holds all
//     b.N; the wait is timed, so the figure counts stored entries, not sent
//     ones. The publisher keeps at most publishWindow messages unstored (a
//     long-poll fetch every publishWindow/2 messages), as a well-behaved
//     publisher that paces itself by what it reads back. A message dropped
//     anyway fails the round.
//   - nats-publish-burst: the same without the window, as fast as nats.go
//     takes messages, which outruns storage. A full topic queue holds the
//     subscription's delivery, so the excess waits in the client library's
//     pending buffer; beyond that NATS drops it (slow consumer) and the node
//     counts it in walrus_nats_publish_dropped_total. The round waits until
//     every message is stored or counted as dropped (fails otherwise) and
//     reports the stored rate and the dropped share.
//   - tcp-put/conc=N: N goroutines, each with its own protocol.Client (the
//     native protocol has one request in flight per connection, so N
//     concurrent producers need N connections), each sending PUT and
//     waiting for OK.
func BenchmarkProduce(b *testing.B) {
	n := startBenchNode(b)
	b.Run("nats-request", func(b *testing.B) {
		for _, conc := range []int{1, 64} {
			b.Run("conc="+strconv.Itoa(conc), func(b *testing.B) { benchNATSRequest(b, n, conc) })
		}
	})
	b.Run("nats-publish", func(b *testing.B) { benchNATSPublish(b, n, publishWindow) })
	b.Run("nats-publish-burst", func(b *testing.B) { benchNATSPublish(b, n, 0) })
	b.Run("tcp-put", func(b *testing.B) {
		for _, conc := range []int{1, 64} {
			b.Run("conc="+strconv.Itoa(conc), func(b *testing.B) { benchTCPPut(b, n, conc) })
		}
	})
}

const benchEntryBytes = 100

// benchPayload is every benchmark entry: 100 bytes of printable text (a TCP
// PUT payload must be text).
var benchPayload = bytes.Repeat([]byte("x"), benchEntryBytes)

// benchNode is the node under measurement.
type benchNode struct {
	srv      *broker.Server
	httpAddr string
	topics   atomic.Int64 // topics created, for fresh names
}

// startBenchNode starts a one-node cluster on fresh ports and b.TempDir(),
// shut down at the end of b. Storage options are the defaults (fsync
// always, pre-written space, pwrite backend); Raft timing is the harness's
// fast one so that the node leads quickly.
func startBenchNode(b *testing.B) *benchNode {
	b.Helper()
	logs := &testLog{}
	p := freeport.Get(b, 5)
	cfg := broker.Config{
		NodeID:          1,
		DataDir:         b.TempDir(),
		RaftHost:        "127.0.0.1",
		RaftPort:        p[0],
		ClientHost:      "127.0.0.1",
		ClientPort:      p[1],
		NATSPort:        p[2],
		NATSClusterPort: p[3],
		HTTPAddr:        "127.0.0.1:" + strconv.Itoa(p[4]),
		RaftTiming: broker.RaftTiming{
			HeartbeatTimeout:   200 * time.Millisecond,
			ElectionTimeout:    200 * time.Millisecond,
			LeaderLeaseTimeout: 100 * time.Millisecond,
			CommitTimeout:      10 * time.Millisecond,
		},
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
	srv, err := startServer(cfg, 30*time.Second)
	if err != nil {
		b.Fatalf("start node: %v", err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			b.Errorf("shutdown: %v", err)
		}
		logs.mu.Lock()
		defer logs.mu.Unlock()
		logs.done = true
		if b.Failed() && logs.buf.Len() > 0 {
			b.Logf("node logs:\n%s", logs.buf.String())
		}
	})
	waitFor(b, 30*time.Second, func() error {
		if m := metricsOf(b, srv); m.State != "Leader" {
			return fmt.Errorf("node is %s, not the raft leader", m.State)
		}
		return nil
	})
	n := &benchNode{srv: srv, httpAddr: cfg.HTTPAddr}
	// Warm up both paths once (leases, segment files, connections).
	topic := n.newTopic(b, "warmup")
	nc := n.natsConnect(b, nil)
	defer nc.Close()
	if _, err := nc.Request("walrus.pub."+topic, benchPayload, 10*time.Second); err != nil {
		b.Fatalf("warm-up request: %v", err)
	}
	c := n.tcpDial(b)
	defer c.Close()
	if err := c.Put(benchCtx(b), topic, benchPayload); err != nil {
		b.Fatalf("warm-up PUT: %v", err)
	}
	return n
}

func benchCtx(b *testing.B) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	b.Cleanup(cancel)
	return ctx
}

// newTopic registers a topic no round used before. Register returns once
// the node's NATS server routes walrus.pub.<topic> to the leader.
func (n *benchNode) newTopic(b *testing.B, kind string) string {
	b.Helper()
	name := fmt.Sprintf("bench.%s.%d", kind, n.topics.Add(1))
	if err := n.srv.Register(benchCtx(b), name); err != nil {
		b.Fatalf("register %s: %v", name, err)
	}
	return name
}

// asyncErrors collects a NATS connection's asynchronous errors (a slow
// consumer on the reply subscription, for instance).
type asyncErrors struct {
	mu   sync.Mutex
	errs []string
}

func (e *asyncErrors) handler(_ *nats.Conn, sub *nats.Subscription, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.errs) < 10 {
		subj := ""
		if sub != nil {
			subj = sub.Subject
		}
		e.errs = append(e.errs, fmt.Sprintf("%s: %v", subj, err))
	}
}

func (e *asyncErrors) check(b *testing.B) {
	b.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.errs) > 0 {
		b.Errorf("NATS async errors: %s", strings.Join(e.errs, "; "))
	}
}

// natsConnect opens a nats.go connection to the node's TCP client port.
// The caller closes it.
func (n *benchNode) natsConnect(b *testing.B, errs *asyncErrors) *nats.Conn {
	b.Helper()
	opts := []nats.Option{nats.Name(b.Name())}
	if errs != nil {
		opts = append(opts, nats.ErrorHandler(errs.handler))
	}
	nc, err := nats.Connect(n.srv.NATSURL(), opts...)
	if err != nil {
		b.Fatalf("connect to %s: %v", n.srv.NATSURL(), err)
	}
	return nc
}

// tcpDial opens a native protocol client. The caller closes it.
func (n *benchNode) tcpDial(b *testing.B) *protocol.Client {
	b.Helper()
	c, err := protocol.Dial(benchCtx(b), n.srv.ClientAddr().String(), protocol.WithReconnect(false))
	if err != nil {
		b.Fatalf("dial %s: %v", n.srv.ClientAddr(), err)
	}
	return c
}

// firstError keeps the first error of concurrent workers.
type firstError struct {
	once sync.Once
	err  error
}

func (f *firstError) set(err error) { f.once.Do(func() { f.err = err }) }

// claim hands out the b.N entries to the workers; stop makes every worker
// finish after its current entry.
type claim struct{ next, n atomic.Int64 }

func newClaim(n int) *claim {
	c := &claim{}
	c.n.Store(int64(n))
	return c
}

func (c *claim) take() bool { return c.next.Add(1) <= c.n.Load() }
func (c *claim) stop()      { c.n.Store(0) }

func reportRate(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
}

func benchNATSRequest(b *testing.B, n *benchNode, conc int) {
	topic := n.newTopic(b, "nats-request")
	var aerrs asyncErrors
	nc := n.natsConnect(b, &aerrs)
	defer nc.Close()
	subject := "walrus.pub." + topic
	seen := make([]atomic.Bool, b.N) // offsets acked
	work := newClaim(b.N)
	var fail firstError
	b.SetBytes(benchEntryBytes)
	b.ResetTimer()
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for work.take() {
				if err := natsProduce(nc, subject, topic, seen); err != nil {
					fail.set(err)
					work.stop()
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	if fail.err != nil {
		b.Fatal(fail.err)
	}
	reportRate(b)
	for i := range seen {
		if !seen[i].Load() {
			b.Fatalf("offset %d was never acked (b.N %d)", i, b.N)
		}
	}
	aerrs.check(b)
	verifyStored(b, nc, topic, b.N)
}

// natsProduce sends one request and checks its ack: no error, this topic,
// an offset below len(seen) that no other ack had.
func natsProduce(nc *nats.Conn, subject, topic string, seen []atomic.Bool) error {
	m, err := nc.Request(subject, benchPayload, 30*time.Second)
	if err != nil {
		return fmt.Errorf("request: %w", err)
	}
	if code := m.Header.Get("Walrus-Error"); code != "" {
		return fmt.Errorf("error reply %s: %s", code, m.Data)
	}
	var a natsAck
	if err := json.Unmarshal(m.Data, &a); err != nil {
		return fmt.Errorf("ack %q: %w", m.Data, err)
	}
	if a.Topic != topic || a.Duplicate || a.Offset >= uint64(len(seen)) {
		return fmt.Errorf("unexpected ack %+v (b.N %d)", a, len(seen))
	}
	if seen[a.Offset].Swap(true) {
		return fmt.Errorf("offset %d acked twice", a.Offset)
	}
	return nil
}

// publishWindow bounds how many plain publishes run ahead of storage in
// nats-publish.
const publishWindow = 8192

// benchNATSPublish publishes b.N plain messages on one connection and waits
// until the topic holds them all. With window > 0 the publisher checks,
// every window/2 messages, that all but the last window/2 are stored (one
// long-poll fetch), so that at most window messages are unstored at any
// time; window 0 publishes as fast as nats.go takes messages.
func benchNATSPublish(b *testing.B, n *benchNode, window int) {
	topic := n.newTopic(b, "nats-publish")
	var aerrs asyncErrors
	nc := n.natsConnect(b, &aerrs)
	defer nc.Close()
	subject := "walrus.pub." + topic
	dropped0 := n.dropped(b)
	if window > 0 { // a burst's ns/op and MB/s would count dropped messages
		b.SetBytes(benchEntryBytes)
	}
	b.ResetTimer()
	for i := range b.N {
		if window > 0 && i > 0 && i%(window/2) == 0 {
			waitStored(b, n, nc, topic, i-window/2, dropped0)
		}
		if err := nc.Publish(subject, benchPayload); err != nil {
			b.Fatalf("publish: %v", err)
		}
	}
	if err := nc.Flush(); err != nil {
		b.Fatalf("flush: %v", err)
	}
	sent := b.Elapsed()
	stored := waitStored(b, n, nc, topic, b.N, dropped0)
	b.StopTimer()
	b.ReportMetric(float64(stored)/b.Elapsed().Seconds(), "entries/s")
	if window > 0 {
		if stored != b.N {
			b.Fatalf("%d of %d plain publishes stored by a paced publisher", stored, b.N)
		}
		aerrs.check(b)
		verifyStored(b, nc, topic, b.N)
		return
	}
	b.ReportMetric(float64(b.N)/sent.Seconds(), "sent/s")
	b.ReportMetric(100*float64(b.N-stored)/float64(b.N), "dropped_%")
}

func benchTCPPut(b *testing.B, n *benchNode, conc int) {
	topic := n.newTopic(b, "tcp-put")
	clients := make([]*protocol.Client, conc)
	for i := range clients {
		clients[i] = n.tcpDial(b)
		defer clients[i].Close()
	}
	nc := n.natsConnect(b, nil) // for the check
	defer nc.Close()
	ctx := benchCtx(b)
	work := newClaim(b.N)
	var fail firstError
	b.SetBytes(benchEntryBytes)
	b.ResetTimer()
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Go(func() {
			for work.take() {
				if err := c.Put(ctx, topic, benchPayload); err != nil {
					fail.set(fmt.Errorf("PUT: %w", err))
					work.stop()
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	if fail.err != nil {
		b.Fatal(fail.err)
	}
	reportRate(b)
	verifyStored(b, nc, topic, b.N)
}

// fetch reads at most one entry of topic at offset, waiting up to wait.
func fetchOne(nc *nats.Conn, topic string, offset uint64, wait time.Duration) (natsFetch, error) {
	body := fmt.Sprintf(`{"offset":%d,"max":1,"wait_ms":%d}`, offset, wait.Milliseconds())
	m, err := nc.Request("walrus.fetch."+topic, []byte(body), wait+10*time.Second)
	if err != nil {
		return natsFetch{}, fmt.Errorf("fetch %s at %d: %w", topic, offset, err)
	}
	if code := m.Header.Get("Walrus-Error"); code != "" {
		return natsFetch{}, fmt.Errorf("fetch %s at %d: error reply %s: %s", topic, offset, code, m.Data)
	}
	var f natsFetch
	if err := json.Unmarshal(m.Data, &f); err != nil {
		return natsFetch{}, fmt.Errorf("fetch reply %q: %w", m.Data, err)
	}
	return f, nil
}

// verifyStored checks that topic holds exactly n entries, the last one
// being a benchmark payload at offset n-1.
func verifyStored(b *testing.B, nc *nats.Conn, topic string, n int) {
	b.Helper()
	last, err := fetchOne(nc, topic, uint64(n-1), 0)
	if err != nil {
		b.Fatal(err)
	}
	if len(last.Entries) != 1 || last.Entries[0].Offset != uint64(n-1) || !bytes.Equal(last.Entries[0].Data, benchPayload) {
		b.Fatalf("%s: no benchmark entry at offset %d (b.N %d): %+v", topic, n-1, n, last)
	}
	after, err := fetchOne(nc, topic, uint64(n), 0)
	if err != nil {
		b.Fatal(err)
	}
	if len(after.Entries) != 0 {
		b.Fatalf("%s: entry past offset %d (b.N %d): offset %d", topic, n-1, n, after.Entries[0].Offset)
	}
}

// storedCount returns how many entries topic holds (offsets are dense on
// one node), by binary search over fetches.
func storedCount(nc *nats.Conn, topic string, upTo int) (int, error) {
	lo, hi := 0, upTo // lo entries are known stored; more than hi are not
	for lo < hi {
		mid := (lo + hi + 1) / 2
		f, err := fetchOne(nc, topic, uint64(mid-1), 0)
		if err != nil {
			return 0, err
		}
		if len(f.Entries) > 0 {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo, nil
}

// waitStored waits until every one of the first want published messages
// is stored or counted as dropped by the node (dropped0 is the node's drop
// counter before the round), and returns how many are stored. It fails
// when neither count moves for 10 s.
func waitStored(b *testing.B, n *benchNode, nc *nats.Conn, topic string, want int, dropped0 int) int {
	b.Helper()
	last, since := -1, time.Now()
	for {
		if want <= 0 {
			return 0
		}
		f, err := fetchOne(nc, topic, uint64(want-1), 100*time.Millisecond)
		if err != nil {
			b.Fatal(err)
		}
		if len(f.Entries) > 0 {
			return want
		}
		stored, err := storedCount(nc, topic, want)
		if err != nil {
			b.Fatal(err)
		}
		dropped := n.dropped(b) - dropped0
		if stored+dropped >= want {
			return stored
		}
		if stored+dropped != last {
			last, since = stored+dropped, time.Now()
			continue
		}
		if time.Since(since) > 10*time.Second {
			b.Fatalf("%s: of %d published, %d stored and %d counted as dropped; no progress for 10s",
				topic, want, stored, dropped)
		}
	}
}

// dropped returns the node's walrus_nats_publish_dropped_total, all
// reasons summed.
func (n *benchNode) dropped(b *testing.B) int {
	b.Helper()
	total := 0
	for _, line := range strings.Split(n.scrape(b, "walrus_nats_publish_dropped_total"), ", ") {
		if line == "" {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			b.Fatalf("metric line %q: %v", line, err)
		}
		total += int(v)
	}
	return total
}

// scrape returns the node's /metrics lines of one metric family, joined.
func (n *benchNode) scrape(b *testing.B, family string) string {
	b.Helper()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("http://" + n.httpAddr + "/metrics")
	if err != nil {
		b.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	var out []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, family) {
			out = append(out, line)
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, bufio.ErrTooLong) {
		b.Fatalf("scrape: %v", err)
	}
	return strings.Join(out, ", ")
}
