package cluster

import (
	"sort"

	"github.com/benbjohnson/immutable"
)

// NodeID identifies a node; it is also its Raft server id.
type NodeID uint64

// NodeInfo is what the cluster knows about a member.
type NodeInfo struct {
	ID NodeID `json:"id"`
	// UUID identifies the node's data directory: a node that lost its
	// directory comes back with another one and is refused under its old id.
	UUID       string `json:"uuid"`
	RaftAddr   string `json:"raft_addr"`   // advertised host:port of Raft and joins
	RouteURL   string `json:"route_url"`   // NATS route URL for the other nodes
	NATSURL    string `json:"nats_url"`    // NATS client URL
	ClientAddr string `json:"client_addr"` // native TCP protocol host:port
	HTTPAddr   string `json:"http_addr,omitempty"`
}

// SegmentState is the life cycle of a segment in the metadata.
type SegmentState string

// Segment states.
const (
	// SegmentOpen is the one writable segment of a topic.
	SegmentOpen SegmentState = "open"
	// SegmentSealed is closed with a known entry count.
	SegmentSealed SegmentState = "sealed"
	// SegmentPending was failed over while its leader was unreachable: it
	// takes no writes and its count is known once the leader reports it.
	SegmentPending SegmentState = "pending"
)

// Segment describes one segment of a topic.
type Segment struct {
	ID     uint64       `json:"id"`
	Leader NodeID       `json:"leader"`
	Epoch  uint64       `json:"epoch"` // the Raft index of the command that opened it
	State  SegmentState `json:"state"`
	Base   uint64       `json:"base"`  // topic offset of the first entry
	Count  uint64       `json:"count"` // entries; meaningful once sealed
	// MaxEntries is the most entries the segment may hold, fixed when it
	// opens; a failover reserves that many offsets for it.
	MaxEntries uint64 `json:"max_entries"`
	// Bytes is the sealed segment's size in its leader's storage, and
	// SealedAt when it was sealed (Unix nanoseconds); retention goes by
	// them. Both are 0 for a segment that is not sealed, or was sealed by a
	// version that did not record them.
	Bytes    int64 `json:"bytes,omitempty"`
	SealedAt int64 `json:"sealed_at,omitempty"`
}

// End returns the topic offset after the segment's last entry, for a
// sealed segment.
func (s Segment) End() uint64 { return s.Base + s.Count }

// Topic is a topic's metadata. Values handed out by Metadata are shared and
// must not be modified.
type Topic struct {
	Name     string    `json:"name"`
	Segments []Segment `json:"segments"` // ascending ids; the last one is open
	// Cursor is the shared destructive read position (GET): the next topic
	// offset to deliver.
	Cursor uint64 `json:"cursor"`
	// Groups holds consumer groups' committed offsets.
	Groups map[string]uint64 `json:"groups,omitempty"`
	// Capture lists the NATS subjects (wildcards allowed) whose messages
	// are stored in the topic.
	Capture []string `json:"capture,omitempty"`
	// CursorMoves are the latest cursor moves that carried a token, oldest
	// first (at most maxCursorMoves), so that a replayed move is
	// recognised, and a replay older than all of them is reported as such
	// (Result.TokenForgotten) instead of as a move that lost the race.
	// (Snapshots before this field kept only the tokens, in
	// "cursor_tokens"; a node restoring one starts with no moves
	// remembered, which answers a replay TokenForgotten, never wrongly.)
	CursorMoves []CursorMove `json:"cursor_moves,omitempty"`
	// Trimmed counts the entries of the sealed segments retention deleted
	// (CmdTrimTopic), so that SealedEntries does not go back.
	Trimmed uint64 `json:"trimmed,omitempty"`
}

// CursorMove is a cursor move remembered by its token.
type CursorMove struct {
	Token string `json:"token"`
	From  uint64 `json:"from"` // the cursor the move started from
}

// maxCursorMoves bounds Topic.CursorMoves. A replay of a move that has
// left the window cannot be judged (Result.TokenForgotten): the window is
// how many later moves a replay may come after and still be answered.
const maxCursorMoves = 64

// remembersMovesFrom reports whether every move with a token that started
// at cursor from or later is in t.CursorMoves. The cursor only moves
// forward, so such a move is no older than the oldest one remembered if
// that one started at or before from.
func (t *Topic) remembersMovesFrom(from uint64) bool {
	return len(t.CursorMoves) > 0 && t.CursorMoves[0].From <= from
}

// Open returns the topic's open segment.
func (t *Topic) Open() Segment { return t.Segments[len(t.Segments)-1] }

// Segment returns the segment with the given id.
func (t *Topic) Segment(id uint64) (Segment, bool) {
	i := sort.Search(len(t.Segments), func(i int) bool { return t.Segments[i].ID >= id })
	if i < len(t.Segments) && t.Segments[i].ID == id {
		return t.Segments[i], true
	}
	return Segment{}, false
}

// SegmentFor returns the segment that holds topic offset off, or would hold
// it: the last segment whose base is at or below off. The caller checks the
// segment's state and count.
func (t *Topic) SegmentFor(off uint64) Segment {
	i := sort.Search(len(t.Segments), func(i int) bool { return t.Segments[i].Base > off })
	if i == 0 {
		return t.Segments[0]
	}
	return t.Segments[i-1]
}

// FirstOffset is the topic offset of the first entry retention kept: the
// base of the first segment.
func (t *Topic) FirstOffset() uint64 { return t.Segments[0].Base }

// SealedEntries is the sum of the sealed segments' counts, those retention
// deleted included (the original's last_sealed_entry_offset).
func (t *Topic) SealedEntries() uint64 {
	n := t.Trimmed
	for _, s := range t.Segments {
		if s.State == SegmentSealed {
			n += s.Count
		}
	}
	return n
}

// Metadata is an immutable snapshot of the cluster metadata. Each applied
// command produces a new one sharing what did not change.
type Metadata struct {
	// Index is the Raft index of the last command applied.
	Index  uint64
	nodes  *immutable.SortedMap[NodeID, NodeInfo]
	topics *immutable.Map[string, *Topic]
}

func emptyMetadata() *Metadata {
	return &Metadata{
		nodes:  immutable.NewSortedMap[NodeID, NodeInfo](nil),
		topics: immutable.NewMap[string, *Topic](nil),
	}
}

// Node returns a member by id.
func (m *Metadata) Node(id NodeID) (NodeInfo, bool) { return m.nodes.Get(id) }

// Nodes returns the members in id order.
func (m *Metadata) Nodes() []NodeInfo {
	out := make([]NodeInfo, 0, m.nodes.Len())
	for it := m.nodes.Iterator(); !it.Done(); {
		_, n, _ := it.Next()
		out = append(out, n)
	}
	return out
}

// Topic returns a topic. The result is shared: do not modify it.
func (m *Metadata) Topic(name string) (*Topic, bool) { return m.topics.Get(name) }

// TopicNames returns the topic names, sorted.
func (m *Metadata) TopicNames() []string {
	out := make([]string, 0, m.topics.Len())
	for it := m.topics.Iterator(); !it.Done(); {
		name, _, _ := it.Next()
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

// NumTopics returns how many topics exist.
func (m *Metadata) NumTopics() int { return m.topics.Len() }
