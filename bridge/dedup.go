package bridge

import (
	"container/list"
	"sync"
	"time"
)

// dedup remembers the outcome of recent requests by request id, so that a
// retried append or proposal is answered without running it again.
//
// An id is remembered from the moment its first copy arrives until it is
// older than window or more than max newer ids have arrived, whichever comes
// first (a FIFO in arrival order with a time limit). While the first copy
// runs, later copies wait for its outcome: their reply subjects are queued
// on the entry and answered with the same response. A retryable outcome
// (CodeUnavailable) is not remembered, so a retry runs the request again.
type dedup struct {
	window time.Duration
	max    int
	now    func() time.Time

	mu struct {
		sync.Mutex
		entries map[string]*dedupEntry
		order   list.List // of *dedupEntry, oldest first
	}
}

type dedupEntry struct {
	key     string
	created time.Time
	elem    *list.Element // nil once forgotten

	// Guarded by dedup.mu.
	done    bool
	resp    []byte   // encoded response, once done
	waiters []string // reply subjects of copies that arrived while running
}

func newDedup(window time.Duration, max int) *dedup {
	d := &dedup{window: window, max: max, now: time.Now}
	d.mu.entries = make(map[string]*dedupEntry)
	return d
}

// begin registers a request id. If the id is new, it returns an entry that
// the caller owns: it runs the request and calls finish. If the id is
// known and done, it returns the remembered response. If the id is known
// and running, it queues reply to be answered by finish and returns
// neither.
func (d *dedup) begin(key, reply string) (owned *dedupEntry, resp []byte) {
	now := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.evictLocked(now)
	if e, ok := d.mu.entries[key]; ok {
		if e.done {
			return nil, e.resp
		}
		e.waiters = append(e.waiters, reply)
		return nil, nil
	}
	e := &dedupEntry{key: key, created: now}
	e.elem = d.mu.order.PushBack(e)
	d.mu.entries[key] = e
	return e, nil
}

// finish records the outcome of an owned entry and returns the reply
// subjects of the copies that waited for it. If remember is false the id is
// forgotten, so the next copy runs again.
func (d *dedup) finish(e *dedupEntry, resp []byte, remember bool) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	e.done = true
	e.resp = resp
	waiters := e.waiters
	e.waiters = nil
	if !remember {
		d.forgetLocked(e)
	}
	return waiters
}

// len reports the number of remembered ids.
func (d *dedup) len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.mu.entries)
}

func (d *dedup) evictLocked(now time.Time) {
	for {
		front := d.mu.order.Front()
		if front == nil {
			return
		}
		e := front.Value.(*dedupEntry)
		if d.mu.order.Len() < d.max && now.Sub(e.created) < d.window {
			return
		}
		d.forgetLocked(e)
	}
}

// forgetLocked drops e from the index. A running entry that is forgotten
// (it outlived the window) still answers its waiters when it finishes.
func (d *dedup) forgetLocked(e *dedupEntry) {
	if e.elem == nil {
		return
	}
	d.mu.order.Remove(e.elem)
	e.elem = nil
	if d.mu.entries[e.key] == e {
		delete(d.mu.entries, e.key)
	}
}
