package broker

import (
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/walrus-edge/walrus/bridge"
	"github.com/walrus-edge/walrus/storage"
)

// notifier wakes the readers waiting for a topic's next local append (long
// polling fetches).
type notifier struct {
	mu    sync.Mutex
	chans map[string]chan struct{}
}

// wait returns a channel closed at the topic's next append on this node.
func (n *notifier) wait(topic string) <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.chans == nil {
		n.chans = map[string]chan struct{}{}
	}
	c := n.chans[topic]
	if c == nil {
		c = make(chan struct{})
		n.chans[topic] = c
	}
	return c
}

func (n *notifier) notify(topic string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if c := n.chans[topic]; c != nil {
		close(c)
		delete(n.chans, topic)
	}
}

// tailer publishes the entries this node appends to the public tail
// subjects, in index order per segment: appends finish their durable write
// in any order (group commit), so an append that completes ahead of an
// earlier one waits in pending until the gap is filled.
type tailer struct {
	api    atomic.Pointer[bridge.API]
	mu     sync.Mutex
	topics map[string]*tailState
}

type tailState struct {
	mu      sync.Mutex
	segment uint64
	next    uint64 // the index expected next in segment
	pending map[uint64]tailBatch
}

// tailBatch is one append: its entries (nil when nobody listened) and size.
type tailBatch struct {
	n       uint64
	entries []bridge.Entry
}

// maxTailPending bounds the appends held for ordering; beyond it (a gap
// that will not fill) they are published as they are.
const maxTailPending = 256

// appended records an append of recs at firstIndex of segment segID.
func (t *tailer) appended(topic string, segID, firstIndex, firstOffset uint64, recs []storage.Record) {
	api := t.api.Load()
	if api == nil {
		return
	}
	b := tailBatch{n: uint64(len(recs))}
	if api.TailInterest(topic) {
		b.entries = make([]bridge.Entry, len(recs))
		for i, r := range toBridgeRecords(recs) {
			b.entries[i] = bridge.Entry{Segment: segID, Index: firstIndex + uint64(i), Offset: firstOffset + uint64(i), Record: r}
		}
	}
	st := t.state(topic)
	st.mu.Lock()
	defer st.mu.Unlock()
	switch {
	case segID > st.segment || st.pending == nil:
		// A new segment (or the first append seen): start from here.
		st.segment, st.next, st.pending = segID, firstIndex, map[uint64]tailBatch{}
	case segID < st.segment || firstIndex < st.next:
		api.Tail(topic, b.entries) // late or out of order: nothing to wait for
		return
	}
	st.pending[firstIndex] = b
	for {
		p, ok := st.pending[st.next]
		if !ok {
			break
		}
		delete(st.pending, st.next)
		api.Tail(topic, p.entries)
		st.next += p.n
	}
	if len(st.pending) > maxTailPending {
		for _, idx := range slices.Sorted(maps.Keys(st.pending)) {
			p := st.pending[idx]
			api.Tail(topic, p.entries)
			st.next = max(st.next, idx+p.n)
		}
		clear(st.pending)
	}
}

func (t *tailer) state(topic string) *tailState {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.topics == nil {
		t.topics = map[string]*tailState{}
	}
	st := t.topics[topic]
	if st == nil {
		st = &tailState{}
		t.topics[topic] = st
	}
	return st
}
