package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// fsm is the metadata state machine. Apply turns each committed command into
// a new immutable Metadata; readers load the current one without locks.
type fsm struct {
	state atomic.Pointer[Metadata]

	mu     sync.Mutex
	notify chan struct{} // closed and replaced after every apply
}

func newFSM() *fsm {
	f := &fsm{notify: make(chan struct{})}
	f.state.Store(emptyMetadata())
	return f
}

// metadata returns the current snapshot.
func (f *fsm) metadata() *Metadata { return f.state.Load() }

// Apply implements raft.FSM. It returns a Result.
func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	cur := f.state.Load()
	var next *Metadata
	var res Result
	cmd, err := DecodeCommand(l.Data)
	if err != nil {
		// A command that does not decode was proposed by a buggy or newer
		// node. Every replica skips it the same way.
		next, res = cur.withIndex(l.Index), Result{Reason: err.Error()}
	} else {
		next, res = apply(cur, cmd, l.Index)
	}
	res.Index = l.Index
	f.install(next)
	return res
}

func (f *fsm) install(m *Metadata) {
	f.state.Store(m)
	f.mu.Lock()
	close(f.notify)
	f.notify = make(chan struct{})
	f.mu.Unlock()
}

// waitIndex blocks until a command at index or later has been applied.
func (f *fsm) waitIndex(ctx context.Context, index uint64) error {
	for {
		f.mu.Lock()
		ch := f.notify
		f.mu.Unlock()
		if f.state.Load().Index >= index {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("cluster: wait for index %d: %w", index, ctx.Err())
		}
	}
}

// changed returns a channel closed at the next apply.
func (f *fsm) changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.notify
}

func (m *Metadata) withIndex(index uint64) *Metadata {
	n := *m
	n.Index = index
	return &n
}

// apply computes the metadata after cmd at Raft index index. It is a pure
// function of its inputs, so every replica computes the same state.
func apply(m *Metadata, cmd Command, index uint64) (*Metadata, Result) {
	next := m.withIndex(index)
	switch cmd.Type {
	case CmdUpsertNode:
		if old, ok := m.nodes.Get(cmd.Node.ID); ok && old.UUID != cmd.Node.UUID {
			return next, Result{Reason: fmt.Sprintf("%v: node %d has data directory %s, not %s",
				ErrNodeReplaced, cmd.Node.ID, old.UUID, cmd.Node.UUID)}
		}
		next.nodes = m.nodes.Set(cmd.Node.ID, *cmd.Node)
		return next, Result{Applied: true}
	case CmdRemoveNode:
		if _, ok := m.nodes.Get(cmd.NodeID); !ok {
			return next, Result{Reason: fmt.Sprintf("node %d is not a member", cmd.NodeID)}
		}
		next.nodes = m.nodes.Delete(cmd.NodeID)
		return next, Result{Applied: true}
	case CmdDeleteTopic:
		if _, ok := m.topics.Get(cmd.Topic); !ok {
			return next, Result{Reason: "unknown topic"}
		}
		next.topics = m.topics.Delete(cmd.Topic)
		return next, Result{Applied: true}
	case CmdCreateTopic:
		if t, ok := m.topics.Get(cmd.Topic); ok {
			return next, Result{Reason: "topic exists", Segment: t.Open().ID}
		}
		if _, ok := m.nodes.Get(cmd.NodeID); !ok {
			return next, Result{Reason: fmt.Sprintf("leader %d is not a member", cmd.NodeID)}
		}
		t := &Topic{Name: cmd.Topic, Segments: []Segment{{
			ID: 1, Leader: cmd.NodeID, Epoch: index, State: SegmentOpen, MaxEntries: cmd.MaxEntries,
		}}}
		next.topics = m.topics.Set(cmd.Topic, t)
		return next, Result{Applied: true, Segment: 1}
	}
	t, ok := m.topics.Get(cmd.Topic)
	if !ok {
		return next, Result{Reason: "unknown topic"}
	}
	nt, res := applyTopic(m, t, cmd, index)
	if res.Applied {
		next.topics = m.topics.Set(cmd.Topic, nt)
	}
	res.Segment = nt.Open().ID
	return next, res
}

// applyTopic applies a command to one topic, returning the new topic (t
// itself when nothing changed).
func applyTopic(m *Metadata, t *Topic, cmd Command, index uint64) (*Topic, Result) {
	switch cmd.Type {
	case CmdRollover, CmdFailover:
		open := t.Open()
		if open.ID != cmd.Segment || open.Epoch != cmd.Epoch || open.State != SegmentOpen {
			return t, Result{Reason: fmt.Sprintf("segment %d at epoch %d is not open (open: %d at epoch %d)",
				cmd.Segment, cmd.Epoch, open.ID, open.Epoch)}
		}
		if _, ok := m.nodes.Get(cmd.NodeID); !ok {
			return t, Result{Reason: fmt.Sprintf("next leader %d is not a member", cmd.NodeID)}
		}
		closed := open
		nextBase := open.Base + cmd.Count
		if cmd.Type == CmdRollover {
			closed.State, closed.Count = SegmentSealed, cmd.Count
			closed.Bytes, closed.SealedAt = cmd.Bytes, cmd.Time
		} else {
			// The count is unknown until the leader reports it: reserve
			// every offset the segment could hold.
			closed.State, closed.Count = SegmentPending, 0
			nextBase = open.Base + open.MaxEntries
		}
		nt := *t
		nt.Segments = append(slices.Clip(t.Segments[:len(t.Segments)-1]), closed, Segment{
			ID: open.ID + 1, Leader: cmd.NodeID, Epoch: index, State: SegmentOpen,
			Base: nextBase, MaxEntries: cmd.MaxEntries,
		})
		return &nt, Result{Applied: true}
	case CmdFinalizeSeal:
		i := slices.IndexFunc(t.Segments, func(s Segment) bool { return s.ID == cmd.Segment })
		if i < 0 || t.Segments[i].State != SegmentPending || t.Segments[i].Epoch != cmd.Epoch {
			return t, Result{Reason: fmt.Sprintf("segment %d at epoch %d is not pending", cmd.Segment, cmd.Epoch)}
		}
		if cmd.Count > t.Segments[i].MaxEntries {
			return t, Result{Reason: fmt.Sprintf("count %d exceeds the %d entries reserved for segment %d",
				cmd.Count, t.Segments[i].MaxEntries, cmd.Segment)}
		}
		nt := *t
		nt.Segments = slices.Clone(t.Segments)
		nt.Segments[i].State, nt.Segments[i].Count = SegmentSealed, cmd.Count
		nt.Segments[i].Bytes, nt.Segments[i].SealedAt = cmd.Bytes, cmd.Time
		return &nt, Result{Applied: true}
	case CmdAdvanceCursor:
		if cmd.Token != "" && slices.ContainsFunc(t.CursorMoves, func(m CursorMove) bool { return m.Token == cmd.Token }) {
			return t, Result{Applied: true, Reason: "already applied", Cursor: t.Cursor}
		}
		if t.Cursor != cmd.From {
			if cmd.Token != "" && cmd.From < t.Cursor && !t.remembersMovesFrom(cmd.From) {
				// If this is a replay, its first proposal may have applied
				// and been forgotten since: only the proposer knows
				// whether it is one.
				return t, Result{Reason: "cursor moved; the moves from there are no longer remembered",
					Cursor: t.Cursor, TokenForgotten: true}
			}
			return t, Result{Reason: "cursor moved", Cursor: t.Cursor}
		}
		nt := *t
		nt.Cursor = cmd.To
		if cmd.Token != "" {
			keep := t.CursorMoves[max(0, len(t.CursorMoves)-maxCursorMoves+1):]
			nt.CursorMoves = append(slices.Clip(keep), CursorMove{Token: cmd.Token, From: cmd.From})
		}
		return &nt, Result{Applied: true, Cursor: nt.Cursor}
	case CmdCommitGroup:
		if cur := t.Groups[cmd.Group]; cmd.Offset <= cur {
			return t, Result{Reason: fmt.Sprintf("group %s is at %d", cmd.Group, cur), Cursor: cur}
		}
		nt := *t
		nt.Groups = make(map[string]uint64, len(t.Groups)+1)
		for g, off := range t.Groups {
			nt.Groups[g] = off
		}
		nt.Groups[cmd.Group] = cmd.Offset
		return &nt, Result{Applied: true, Cursor: cmd.Offset}
	case CmdSetCapture:
		nt := *t
		nt.Capture = slices.Clone(cmd.Subjects)
		return &nt, Result{Applied: true}
	case CmdTrimTopic:
		return trimTopic(t, cmd.Segment)
	}
	return t, Result{Reason: fmt.Sprintf("command %s does not apply to a topic", cmd.Type)}
}

// trimTopic deletes the segments of t before segment keep (retention).
// They must all be sealed: an open or pending segment, and what follows it,
// is never deleted. The shared cursor moves up to the first kept offset;
// consumer groups keep their offsets, and reads below the first offset
// start at it. Trimming to where the topic already starts, or before, is
// a no-op, so a repeated or stale proposal changes nothing.
func trimTopic(t *Topic, keep uint64) (*Topic, Result) {
	if keep <= t.Segments[0].ID {
		return t, Result{Reason: fmt.Sprintf("the topic starts at segment %d", t.Segments[0].ID)}
	}
	i := slices.IndexFunc(t.Segments, func(s Segment) bool { return s.ID == keep })
	if i < 0 {
		return t, Result{Reason: fmt.Sprintf("no segment %d", keep)}
	}
	nt := *t
	for _, s := range t.Segments[:i] {
		if s.State != SegmentSealed {
			return t, Result{Reason: fmt.Sprintf("segment %d is %s, not sealed", s.ID, s.State)}
		}
		nt.Trimmed += s.Count
	}
	nt.Segments = slices.Clone(t.Segments[i:])
	nt.Cursor = max(t.Cursor, nt.FirstOffset())
	return &nt, Result{Applied: true, Cursor: nt.Cursor}
}

// snapshotState is the serialised form of the metadata.
type snapshotState struct {
	Version int        `json:"version"`
	Index   uint64     `json:"index"`
	Nodes   []NodeInfo `json:"nodes"`
	Topics  []*Topic   `json:"topics"`
}

const snapshotVersion = 1

// Snapshot implements raft.FSM. The metadata is immutable, so capturing it
// is free; Persist serialises it while Apply goes on.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{m: f.state.Load()}, nil
}

// Restore implements raft.FSM: it replaces the state with a snapshot.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer func() { _ = rc.Close() }() // a read side: the decode error is what counts
	var s snapshotState
	if err := json.NewDecoder(rc).Decode(&s); err != nil {
		return fmt.Errorf("cluster: decode snapshot: %w", err)
	}
	if s.Version != snapshotVersion {
		return fmt.Errorf("cluster: snapshot version %d, want %d", s.Version, snapshotVersion)
	}
	m := emptyMetadata()
	m.Index = s.Index
	for _, n := range s.Nodes {
		m.nodes = m.nodes.Set(n.ID, n)
	}
	for _, t := range s.Topics {
		if t == nil || t.Name == "" || len(t.Segments) == 0 {
			return fmt.Errorf("cluster: snapshot holds an invalid topic")
		}
		m.topics = m.topics.Set(t.Name, t)
	}
	f.install(m)
	return nil
}

type fsmSnapshot struct{ m *Metadata }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	st := snapshotState{Version: snapshotVersion, Index: s.m.Index, Nodes: s.m.Nodes()}
	for _, name := range s.m.TopicNames() {
		t, _ := s.m.Topic(name)
		st.Topics = append(st.Topics, t)
	}
	if err := json.NewEncoder(sink).Encode(&st); err != nil {
		_ = sink.Cancel() // the encode error is the one to report
		return fmt.Errorf("cluster: write snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}

// compile-time interface checks
var (
	_ raft.FSM         = (*fsm)(nil)
	_ raft.FSMSnapshot = (*fsmSnapshot)(nil)
)
