package bridge

import (
	"context"
	"fmt"
	"sort"
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
	signal  chan struct{} // cap 1: work queued or the API stopping

	ids   map[string]*dedupID
	order []*dedupID // ids in insertion order, for expiry
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
	topic := a.topicOf(msg.Subject, "pub")
	if !validSubject(topic, false) {
		a.replyError(msg, fmt.Errorf("%w: subject %q names no topic", ErrBadRequest, msg.Subject))
		return
	}
	rec, err := a.record(msg, false)
	if err != nil {
		a.replyError(msg, err)
		return
	}
	a.enqueue(topic, msg, rec)
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
		p = &producer{topic: topic, signal: make(chan struct{}, 1), ids: map[string]*dedupID{}}
		a.mu.producers[topic] = p
	}
	if len(p.queue) >= maxQueueEntries || p.bytes+pm.size > maxQueueBytes {
		a.mu.Unlock()
		a.replyError(msg, fmt.Errorf("%w: topic %s has %d messages waiting to be stored", ErrUnavailable, topic, maxQueueEntries))
		return
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
// producerIdle or the API stops with nothing queued.
func (a *API) runProducer(p *producer) {
	idle := time.NewTimer(producerIdle)
	defer idle.Stop()
	for {
		a.mu.Lock()
		batch, bytes := takeBatch(p.queue)
		p.queue = p.queue[len(batch):]
		p.bytes -= bytes
		stopped := a.mu.stopped
		if len(batch) == 0 && stopped {
			p.running = false
			delete(a.mu.producers, p.topic)
			a.mu.Unlock()
			return
		}
		a.mu.Unlock()
		if len(batch) > 0 {
			a.storeBatch(p, batch)
			idle.Reset(producerIdle)
			continue
		}
		select {
		case <-p.signal:
		case <-idle.C:
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
