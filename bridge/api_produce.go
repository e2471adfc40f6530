package bridge

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// Produce pipeline. Messages for one topic received by this node are queued
// in arrival order and appended by one goroutine per topic, in batches: one
// backend call (one fsync) for everything that arrived while the previous
// batch was being written. Arrival order is each publisher's order, so the
// log keeps it.

const (
	maxBatchEntries = 256
	maxBatchBytes   = 4 << 20
	maxQueueEntries = 16384
	maxQueueBytes   = 64 << 20
	producerIdle    = 30 * time.Second
	maxDedupIDs     = 1 << 16 // per topic
)

// pubMsg is one message waiting to be stored.
type pubMsg struct {
	msg  *nats.Msg // its Reply is "" for a plain publish or a capture
	rec  Record
	id   string // Nats-Msg-Id, "" if none
	size int
}

// dedupID is a remembered message id: its position once stored, and the
// duplicates waiting for the first copy's outcome meanwhile.
type dedupID struct {
	id      string
	stored  bool
	pos     Position
	at      time.Time
	waiters []*nats.Msg
}

// producer is one topic's queue and the state of its goroutine. Fields are
// guarded by API.mu except ids and order, which only the goroutine uses.
type producer struct {
	topic   string
	queue   []*pubMsg
	bytes   int
	running bool
	seed    bool          // read the window's ids from the log before the next batch (seedIDs)
	signal  chan struct{} // cap 1: work queued or the API stopping
	room    chan struct{} // closed when a batch is taken; nil if nobody waits

	ids   map[string]*dedupID
	order []*dedupID // ids in insertion order, for expiry
}

func newProducer(topic string) *producer {
	return &producer{topic: topic, seed: true, signal: make(chan struct{}, 1), ids: map[string]*dedupID{}}
}

func (p *producer) wake() {
	select {
	case p.signal <- struct{}{}:
	default:
	}
}

// onPublish is the subscription callback of prefix.pub.>: it validates and
// queues; it never blocks on storage.
func (a *API) onPublish(msg *nats.Msg) {
	a.produce(a.topicOf(msg.Subject, "pub"), msg, true)
}

// produce queues a published message for topic, unless this node's
// subscription retires and it goes to the new leader (mayForward).
func (a *API) produce(topic string, msg *nats.Msg, mayForward bool) {
	if !validSubject(topic, false) {
		a.replyError(msg, fmt.Errorf("%w: subject %q names no topic", ErrBadRequest, msg.Subject))
		return
	}
	if mayForward && a.forward(topic, msg) {
		return
	}
	rec, err := a.record(msg, false)
	if err != nil {
		a.replyError(msg, err)
		return
	}
	a.enqueue(topic, msg, rec)
}

// forwardPrefix starts the internal subject a node takes publishes for the
// topics it leads from nodes that led them before: <forwardPrefix><node>.<topic>.
const forwardPrefix = "_WALRUS.pub."

func forwardSubject(node uint64, topic string) string {
	return forwardPrefix + strconv.FormatUint(node, 10) + "." + topic
}

// forward hands a publish that reached this node while its subscription
// retires (leaderHandoff) to the topic's new leader, reply subject
// included, so that one node's pipeline and deduplication window see every
// message of the topic. It reports whether it did.
func (a *API) forward(topic string, msg *nats.Msg) bool {
	a.mu.Lock()
	_, retiring := a.mu.retiring[captureKey{topic: topic}]
	a.mu.Unlock()
	if !retiring {
		return false
	}
	leader, ok := a.backend.OpenLeader(topic)
	if !ok || leader == a.b.cfg.NodeID {
		return false
	}
	// A leader that is (re)starting does not take forwards yet: then this
	// node stores the message itself, through whichever node leads.
	subject := forwardSubject(leader, topic)
	if srv := a.b.server(); srv == nil || !srv.GlobalAccount().SubscriptionInterest(subject) {
		return false
	}
	out := &nats.Msg{Subject: subject, Reply: msg.Reply, Header: msg.Header, Data: msg.Data}
	if err := a.conn.PublishMsg(out); err != nil {
		a.log.Debug("forward to the new leader", "topic", topic, "leader", leader, logKeyErr, err)
		return false
	}
	return true
}

// onForwarded stores a publish forwarded by the topic's previous leader.
// It is never forwarded again, whoever leads by now: the pipeline's
// backend call finds the open segment.
func (a *API) onForwarded(msg *nats.Msg) {
	a.produce(strings.TrimPrefix(msg.Subject, forwardSubject(a.b.cfg.NodeID, "")), msg, false)
}

// record converts msg into a record to store. For a capture, Walrus-
// headers are dropped and Walrus-Subject is added; a producer may not set
// them.
func (a *API) record(msg *nats.Msg, capture bool) (Record, error) {
	keys := make([]string, 0, len(msg.Header))
	for k := range msg.Header {
		keys = append(keys, k)
	}
	sort.Strings(keys) // NATS headers are a map: store them in a stable order
	var hs []Header
	size := len(msg.Data)
	for _, k := range keys {
		if len(k) >= len(reservedPrefix) && strings.EqualFold(k[:len(reservedPrefix)], reservedPrefix) {
			if capture {
				continue
			}
			return Record{}, fmt.Errorf("%w: header %q: keys starting with %s are reserved", ErrBadRequest, k, reservedPrefix)
		}
		for _, v := range msg.Header[k] {
			hs = append(hs, Header{Key: k, Value: v})
			size += len(k) + len(v)
		}
	}
	if capture {
		hs = append(hs, Header{Key: HeaderSubject, Value: msg.Subject})
		size += len(HeaderSubject) + len(msg.Subject)
	}
	if size > a.cfg.MaxMessageBytes {
		return Record{}, fmt.Errorf("%w: message of %d bytes (payload and headers) exceeds the limit of %d",
			ErrTooLarge, size, a.cfg.MaxMessageBytes)
	}
	return Record{Timestamp: time.Now().UnixNano(), Headers: hs, Value: msg.Data}, nil
}

// enqueue queues rec for topic and makes sure its producer goroutine runs.
func (a *API) enqueue(topic string, msg *nats.Msg, rec Record) {
	pm := &pubMsg{msg: msg, rec: rec, id: msg.Header.Get(HeaderMsgID), size: len(rec.Value)}
	for _, h := range rec.Headers {
		pm.size += len(h.Key) + len(h.Value)
	}
	a.mu.Lock()
	if a.mu.stopped {
		a.mu.Unlock()
		a.replyError(msg, fmt.Errorf("%w: node is stopping", ErrUnavailable))
		return
	}
	p := a.mu.producers[topic]
	if p == nil {
		p = newProducer(topic)
		a.mu.producers[topic] = p
	}
	// A full queue holds this message, and with it the subscription's
	// delivery: later messages wait in NATS's buffers (in order) instead of
	// being dropped, until the producer takes a batch or queueWait passes.
	var deadline time.Time
	for len(p.queue) >= maxQueueEntries || p.bytes+pm.size > maxQueueBytes {
		if deadline.IsZero() {
			deadline = time.Now().Add(a.cfg.RequestTimeout)
		}
		if p.room == nil {
			p.room = make(chan struct{})
		}
		room, queued := p.room, len(p.queue)
		a.mu.Unlock()
		if !waitRoom(room, deadline) {
			a.replyError(msg, fmt.Errorf("%w: topic %s has %d messages waiting to be stored", ErrUnavailable, topic, queued))
			return
		}
		a.mu.Lock()
		if a.mu.stopped {
			a.mu.Unlock()
			a.replyError(msg, fmt.Errorf("%w: node is stopping", ErrUnavailable))
			return
		}
		if q := a.mu.producers[topic]; q != nil {
			p = q
		} else { // went idle meanwhile: its queue is empty
			p = newProducer(topic)
			a.mu.producers[topic] = p
		}
	}
	p.queue = append(p.queue, pm)
	p.bytes += pm.size
	start := !p.running
	if start {
		p.running = true
		a.wg.Add(1) // under mu and not stopped: Stop waits for it
	}
	a.mu.Unlock()
	if start {
		go func() {
			defer a.wg.Done()
			a.runProducer(p)
		}()
	}
	p.wake()
}

// waitRoom waits until room is closed (the producer took a batch) or
// deadline passes, and reports which.
func waitRoom(room <-chan struct{}, deadline time.Time) bool {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-room:
		return true
	case <-t.C:
		return false
	}
}

// onSlowConsumer counts the messages the client library dropped on one of
// the topics' publish or capture subscriptions: the node received them
// faster than it stores them for longer than its queue and the library's
// pending buffer (64 MiB each) cover. Requests among them get no reply.
// The library reports the start of a slow spell only, so the producer
// counts the rest when its queue runs empty (countDrops).
func (a *API) onSlowConsumer(sub *nats.Subscription) {
	a.countDrops(func(_ captureKey, s *nats.Subscription) bool { return s == sub })
}

// countDrops reports the drops not counted yet on the produce
// subscriptions (leading and retiring) that match.
func (a *API) countDrops(match func(captureKey, *nats.Subscription) bool) {
	a.mu.Lock()
	n := 0
	count := func(k captureKey, sub *nats.Subscription) {
		if !match(k, sub) {
			return
		}
		if total, err := sub.Dropped(); err == nil && total > a.mu.slowSeen[sub] {
			n += total - a.mu.slowSeen[sub]
			a.mu.slowSeen[sub] = total
		}
	}
	for k, sub := range a.mu.leading {
		count(k, sub)
	}
	for k, r := range a.mu.retiring {
		count(k, r.sub)
	}
	a.mu.Unlock()
	if n > 0 {
		a.droppedN("slow_consumer", n)
	}
}

func (a *API) producerList() []*producer {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]*producer, 0, len(a.mu.producers))
	for _, p := range a.mu.producers {
		out = append(out, p)
	}
	return out
}

// runProducer stores p's queue batch by batch until it has been idle for
// idleAfter with no message id left in the deduplication window, or the API
// stops with nothing queued.
func (a *API) runProducer(p *producer) {
	idle := time.NewTimer(a.idleAfter)
	defer idle.Stop()
	for {
		a.mu.Lock()
		batch, bytes := takeBatch(p.queue)
		p.queue = p.queue[len(batch):]
		p.bytes -= bytes
		if len(batch) > 0 && p.room != nil {
			close(p.room) // wake the messages waiting for room
			p.room = nil
		}
		seed := p.seed && len(batch) > 0
		if seed {
			p.seed = false
		}
		stopped := a.mu.stopped
		if len(batch) == 0 && stopped {
			p.running = false
			delete(a.mu.producers, p.topic)
			a.mu.Unlock()
			return
		}
		a.mu.Unlock()
		if seed && a.cfg.DedupWindow > 0 {
			a.seedIDs(p)
		}
		if len(batch) > 0 {
			a.storeBatch(p, batch)
			idle.Reset(a.idleAfter)
			continue
		}
		a.countDrops(func(k captureKey, _ *nats.Subscription) bool { return k.topic == p.topic })
		select {
		case <-p.signal:
		case <-idle.C:
			// The ids of the window live in p: stay until they expire, or
			// a retry after a quiet spell would be stored twice.
			a.expireIDs(p)
			if len(p.order) > 0 {
				idle.Reset(max(time.Until(p.order[0].at.Add(a.cfg.DedupWindow)), time.Millisecond))
				continue
			}
			a.mu.Lock()
			if len(p.queue) == 0 {
				p.running = false
				delete(a.mu.producers, p.topic)
				a.mu.Unlock()
				return
			}
			a.mu.Unlock()
		}
	}
}

// Seeding bounds: how much of the log a new producer reads for the ids of
// its deduplication window, and for how long.
const (
	seedMaxBytes = 64 << 20
	seedTimeout  = 2 * time.Second
)

// seedIDs adds to p's deduplication window the message ids stored in the
// topic within the window, read from the end of the log, so that the window
// survives the leader's restart and the moves of the topic's leadership
// between nodes: a producer seeds before its first batch and again after
// this node (re)gains the topic. It is best effort: what it cannot read in
// time is logged and skipped.
func (a *API) seedIDs(p *producer) {
	ctx, cancel := context.WithTimeout(a.ctx, min(seedTimeout, a.cfg.RequestTimeout))
	defer cancel()
	start := time.Now()
	entries, err := a.backend.Recent(ctx, p.topic, start.Add(-a.cfg.DedupWindow), maxDedupIDs, seedMaxBytes)
	if err != nil {
		a.log.Warn("deduplication window seeded in part", "topic", p.topic, "entries", len(entries), logKeyErr, err)
	}
	n := 0
	for _, e := range entries {
		for _, h := range e.Headers {
			if h.Key != HeaderMsgID || h.Value == "" {
				continue
			}
			if _, ok := p.ids[h.Value]; !ok { // the first copy answers retries
				d := &dedupID{id: h.Value, stored: true, pos: Position{Segment: e.Segment, Offset: e.Offset}, at: time.Unix(0, e.Timestamp)}
				p.ids[d.id] = d
				p.order = append(p.order, d)
				n++
			}
			break
		}
	}
	if n > 0 || err != nil {
		a.log.Info("deduplication window seeded from the log", "topic", p.topic, "ids", n, "entries_read", len(entries), "took", time.Since(start))
	}
}

// takeBatch returns the head of q that fits one batch (at least one).
func takeBatch(q []*pubMsg) ([]*pubMsg, int) {
	n, bytes := 0, 0
	for n < len(q) && n < maxBatchEntries && (n == 0 || bytes+q[n].size <= maxBatchBytes) {
		bytes += q[n].size
		n++
	}
	return q[:n:n], bytes
}

// storeBatch appends a batch and answers its requests. Duplicates of ids
// stored within the window are answered with the first copy's position
// and not stored again.
func (a *API) storeBatch(p *producer, batch []*pubMsg) {
	a.expireIDs(p)
	var recs []Record
	var fresh []*pubMsg
	var pending []*dedupID // the ids of fresh, nil where none
	for _, m := range batch {
		if m.id != "" && a.cfg.DedupWindow > 0 {
			if d, ok := p.ids[m.id]; ok {
				if d.stored {
					a.ack(m.msg, p.topic, d.pos, true)
				} else {
					d.waiters = append(d.waiters, m.msg)
				}
				continue
			}
			d := &dedupID{id: m.id, at: time.Now()}
			p.ids[m.id] = d
			p.order = append(p.order, d)
			pending = append(pending, d)
		} else {
			pending = append(pending, nil)
		}
		recs = append(recs, m.rec)
		fresh = append(fresh, m)
	}
	if len(recs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(a.ctx, a.cfg.RequestTimeout)
	pos, err := a.backend.Produce(ctx, p.topic, recs)
	cancel()
	for i, m := range fresh {
		d := pending[i]
		if i < len(pos) {
			a.ack(m.msg, p.topic, pos[i], false)
			if d != nil {
				d.stored, d.pos = true, pos[i]
				for _, w := range d.waiters {
					a.ack(w, p.topic, pos[i], true)
				}
				d.waiters = nil
			}
			continue
		}
		if err == nil {
			err = fmt.Errorf("%w: backend stored %d of %d entries", ErrOutcomeUnknown, len(pos), len(recs))
		}
		a.replyError(m.msg, err)
		if d != nil {
			delete(p.ids, d.id) // a retry runs again
			for _, w := range d.waiters {
				a.replyError(w, err)
			}
			d.waiters = nil
		}
	}
	if err != nil {
		a.log.Debug("produce failed", "topic", p.topic, "entries", len(recs), "stored", len(pos), logKeyErr, err)
	}
}

// expireIDs forgets ids older than the window, and the oldest beyond
// maxDedupIDs.
func (a *API) expireIDs(p *producer) {
	cut := time.Now().Add(-a.cfg.DedupWindow)
	n := 0
	for n < len(p.order) && (p.order[n].at.Before(cut) || len(p.order)-n > maxDedupIDs) {
		if d := p.order[n]; p.ids[d.id] == d && d.stored {
			delete(p.ids, d.id)
		}
		n++
	}
	if n > 0 {
		p.order = append(p.order[:0:0], p.order[n:]...)
	}
}

type ackBody struct {
	Topic     string `json:"topic"`
	Segment   uint64 `json:"segment"`
	Offset    uint64 `json:"offset"`
	Duplicate bool   `json:"duplicate,omitempty"`
}

func (a *API) ack(msg *nats.Msg, topic string, pos Position, dup bool) {
	a.replyJSON(msg, ackBody{Topic: topic, Segment: pos.Segment, Offset: pos.Offset, Duplicate: dup})
}

// queued returns how many messages wait in topic's queue (for tests).
func (a *API) queued(topic string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if p := a.mu.producers[topic]; p != nil {
		return len(p.queue)
	}
	return 0
}
