package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// applyAll feeds commands to a fresh FSM at consecutive indexes from 1 and
// returns the FSM and each Result.
func applyAll(t *testing.T, cmds ...Command) (*fsm, []Result) {
	t.Helper()
	f := newFSM()
	var out []Result
	for i, c := range cmds {
		out = append(out, applyOne(t, f, uint64(i+1), c))
	}
	return f, out
}

func applyOne(t *testing.T, f *fsm, index uint64, c Command) Result {
	t.Helper()
	b, err := json.Marshal(c) // not Encode: invalid commands must reach Apply too
	if err != nil {
		t.Fatal(err)
	}
	res, ok := f.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: b}).(Result)
	if !ok {
		t.Fatalf("Apply(%s) did not return a Result", c.Type)
	}
	return res
}

func node(id NodeID) Command {
	return Command{Type: CmdUpsertNode, Node: &NodeInfo{ID: id, UUID: "uuid-" + string(rune('a'+id)), RaftAddr: "127.0.0.1:600" + string(rune('0'+id))}}
}

func TestFSM_TopicLifecycle(t *testing.T) {
	f, res := applyAll(t,
		node(1), node(2), node(3),
		Command{Type: CmdCreateTopic, Topic: "logs", NodeID: 2, MaxEntries: 10}, // index 4
	)
	if !res[3].Applied || res[3].Segment != 1 {
		t.Fatalf("create = %+v", res[3])
	}
	topic, _ := f.metadata().Topic("logs")
	if want := (Segment{ID: 1, Leader: 2, Epoch: 4, State: SegmentOpen, MaxEntries: 10}); topic.Open() != want {
		t.Fatalf("open segment = %+v, want %+v", topic.Open(), want)
	}
	// Creating again is a no-op that names the open segment.
	if r := applyOne(t, f, 5, Command{Type: CmdCreateTopic, Topic: "logs", NodeID: 3, MaxEntries: 10}); r.Applied || r.Segment != 1 {
		t.Fatalf("second create = %+v", r)
	}
	// Rollover seals segment 1 at its count and opens 2 on the next leader.
	r := applyOne(t, f, 6, Command{Type: CmdRollover, Topic: "logs", Segment: 1, Epoch: 4, Count: 10, NodeID: 3, MaxEntries: 10})
	if !r.Applied || r.Segment != 2 {
		t.Fatalf("rollover = %+v", r)
	}
	topic, _ = f.metadata().Topic("logs")
	if s1, _ := topic.Segment(1); s1.State != SegmentSealed || s1.Count != 10 {
		t.Fatalf("segment 1 = %+v", s1)
	}
	if s2 := topic.Open(); s2.ID != 2 || s2.Leader != 3 || s2.Epoch != 6 || s2.Base != 10 {
		t.Fatalf("segment 2 = %+v", s2)
	}
	// Rule 4: the same rollover again (a duplicate), or one naming a stale
	// epoch, is a no-op - the original sealed "phantom" segments here.
	for _, c := range []Command{
		{Type: CmdRollover, Topic: "logs", Segment: 1, Epoch: 4, Count: 10, NodeID: 3, MaxEntries: 10},
		{Type: CmdRollover, Topic: "logs", Segment: 2, Epoch: 5, Count: 3, NodeID: 1, MaxEntries: 10},
	} {
		if r := applyOne(t, f, 7, c); r.Applied || !strings.Contains(r.Reason, "not open") {
			t.Fatalf("stale rollover %+v = %+v", c, r)
		}
	}
	if topic, _ := f.metadata().Topic("logs"); len(topic.Segments) != 2 || topic.SealedEntries() != 10 {
		t.Fatalf("after stale rollovers: %+v", topic.Segments)
	}
	// The rollover must name a member as next leader.
	if r := applyOne(t, f, 8, Command{Type: CmdRollover, Topic: "logs", Segment: 2, Epoch: 6, Count: 1, NodeID: 9, MaxEntries: 10}); r.Applied {
		t.Fatalf("rollover to a non-member = %+v", r)
	}
	if r := applyOne(t, f, 9, Command{Type: CmdDeleteTopic, Topic: "logs"}); !r.Applied {
		t.Fatalf("delete = %+v", r)
	}
	if _, ok := f.metadata().Topic("logs"); ok {
		t.Fatal("topic still there after delete")
	}
}

func TestFSM_FailoverAndFinalize(t *testing.T) {
	f, _ := applyAll(t, node(1), node(2),
		Command{Type: CmdCreateTopic, Topic: "t", NodeID: 1, MaxEntries: 100},                               // index 3
		Command{Type: CmdRollover, Topic: "t", Segment: 1, Epoch: 3, Count: 40, NodeID: 2, MaxEntries: 100}, // index 4
		Command{Type: CmdFailover, Topic: "t", Segment: 2, Epoch: 4, NodeID: 1, MaxEntries: 100},            // index 5
	)
	topic, _ := f.metadata().Topic("t")
	if s2, _ := topic.Segment(2); s2.State != SegmentPending || s2.Base != 40 {
		t.Fatalf("segment 2 = %+v", s2)
	}
	// The next segment starts after every offset segment 2 could hold.
	if s3 := topic.Open(); s3.ID != 3 || s3.Leader != 1 || s3.Base != 140 || s3.Epoch != 5 {
		t.Fatalf("segment 3 = %+v", s3)
	}
	for _, c := range []Command{
		{Type: CmdFinalizeSeal, Topic: "t", Segment: 2, Epoch: 3, Count: 7},   // wrong epoch
		{Type: CmdFinalizeSeal, Topic: "t", Segment: 2, Epoch: 4, Count: 101}, // more than reserved
		{Type: CmdFinalizeSeal, Topic: "t", Segment: 1, Epoch: 3, Count: 7},   // not pending
	} {
		if r := applyOne(t, f, 6, c); r.Applied {
			t.Fatalf("finalize %+v applied", c)
		}
	}
	if r := applyOne(t, f, 7, Command{Type: CmdFinalizeSeal, Topic: "t", Segment: 2, Epoch: 4, Count: 7}); !r.Applied {
		t.Fatalf("finalize = %+v", r)
	}
	if r := applyOne(t, f, 8, Command{Type: CmdFinalizeSeal, Topic: "t", Segment: 2, Epoch: 4, Count: 7}); r.Applied {
		t.Fatal("duplicate finalize applied")
	}
	topic, _ = f.metadata().Topic("t")
	if s2, _ := topic.Segment(2); s2.State != SegmentSealed || s2.Count != 7 || s2.End() != 47 {
		t.Fatalf("finalized segment 2 = %+v", s2)
	}
	if got := topic.SegmentFor(100); got.ID != 2 {
		t.Fatalf("SegmentFor(100) (in the gap) = %d, want 2", got.ID)
	}
	if got := topic.SegmentFor(140); got.ID != 3 {
		t.Fatalf("SegmentFor(140) = %d, want 3", got.ID)
	}
}

func TestFSM_CursorCompareAndSet(t *testing.T) {
	f, _ := applyAll(t, node(1), Command{Type: CmdCreateTopic, Topic: "t", NodeID: 1, MaxEntries: 10})
	if r := applyOne(t, f, 3, Command{Type: CmdAdvanceCursor, Topic: "t", From: 0, To: 1}); !r.Applied || r.Cursor != 1 {
		t.Fatalf("advance 0→1 = %+v", r)
	}
	// A second reader that also read offset 0 loses: the entry was delivered once.
	if r := applyOne(t, f, 4, Command{Type: CmdAdvanceCursor, Topic: "t", From: 0, To: 1}); r.Applied || r.Cursor != 1 {
		t.Fatalf("racing advance 0→1 = %+v", r)
	}
	if r := applyOne(t, f, 5, Command{Type: CmdAdvanceCursor, Topic: "t", From: 1, To: 5}); !r.Applied || r.Cursor != 5 {
		t.Fatalf("advance 1→5 = %+v", r)
	}
	if r := applyOne(t, f, 6, Command{Type: CmdCommitGroup, Topic: "t", Group: "g", Offset: 3}); !r.Applied || r.Cursor != 3 {
		t.Fatalf("commit group = %+v", r)
	}
	// A late commit from a slow consumer never moves a group back.
	for _, off := range []uint64{2, 3} {
		if r := applyOne(t, f, 7, Command{Type: CmdCommitGroup, Topic: "t", Group: "g", Offset: off}); r.Applied || r.Cursor != 3 {
			t.Fatalf("commit group to %d after 3 = %+v", off, r)
		}
	}
	topic, _ := f.metadata().Topic("t")
	if topic.Cursor != 5 || topic.Groups["g"] != 3 {
		t.Fatalf("topic = %+v", topic)
	}
}

func TestFSM_SetCapture(t *testing.T) {
	f, _ := applyAll(t, node(1), Command{Type: CmdCreateTopic, Topic: "t", NodeID: 1, MaxEntries: 10})
	if r := applyOne(t, f, 3, Command{Type: CmdSetCapture, Topic: "t", Subjects: []string{"a.>", "b"}}); !r.Applied {
		t.Fatalf("set capture = %+v", r)
	}
	if topic, _ := f.metadata().Topic("t"); !slices.Equal(topic.Capture, []string{"a.>", "b"}) {
		t.Fatalf("capture = %v", topic.Capture)
	}
	if r := applyOne(t, f, 4, Command{Type: CmdSetCapture, Topic: "t"}); !r.Applied {
		t.Fatalf("clear capture = %+v", r)
	}
	if topic, _ := f.metadata().Topic("t"); len(topic.Capture) != 0 {
		t.Fatalf("capture after clear = %v", topic.Capture)
	}
	if r := applyOne(t, f, 5, Command{Type: CmdSetCapture, Topic: "missing", Subjects: []string{"x"}}); r.Applied {
		t.Fatalf("capture on a missing topic = %+v", r)
	}
	if _, err := (&Command{Type: CmdSetCapture, Topic: "t", Subjects: []string{""}}).Encode(); err == nil {
		t.Fatal("empty subject encoded")
	}
}

// A cursor move replayed after an unknown outcome is recognised by its token:
// it answers Applied without moving the cursor again, so the GET that made
// it delivers its entry instead of losing it. A replay of a move older than
// the window of remembered moves is answered TokenForgotten.
func TestFSM_CursorMoveReplay(t *testing.T) {
	f, _ := applyAll(t, node(1), Command{Type: CmdCreateTopic, Topic: "t", NodeID: 1, MaxEntries: 10})
	move := Command{Type: CmdAdvanceCursor, Topic: "t", From: 0, To: 1, Token: "get-a"}
	if r := applyOne(t, f, 3, move); !r.Applied || r.Cursor != 1 {
		t.Fatalf("first move = %+v", r)
	}
	if r := applyOne(t, f, 4, Command{Type: CmdAdvanceCursor, Topic: "t", From: 1, To: 2, Token: "get-b"}); !r.Applied {
		t.Fatalf("second move = %+v", r)
	}
	if r := applyOne(t, f, 5, move); !r.Applied || r.Cursor != 2 {
		t.Fatalf("replayed move = %+v, want applied without moving", r)
	}
	if r := applyOne(t, f, 6, Command{Type: CmdAdvanceCursor, Topic: "t", From: 0, To: 1, Token: "get-c"}); r.Applied {
		t.Fatalf("a new move from a stale cursor = %+v", r)
	}
	if r := applyOne(t, f, 6, Command{Type: CmdAdvanceCursor, Topic: "t", From: 1, To: 2, Token: "get-d"}); r.Applied || r.TokenForgotten {
		t.Fatalf("a move that lost the race, all moves since remembered = %+v; want cursor moved", r)
	}
	for i := range 2 * maxCursorMoves {
		c := uint64(2 + i)
		applyOne(t, f, uint64(7+i), Command{Type: CmdAdvanceCursor, Topic: "t", From: c, To: c + 1, Token: fmt.Sprint("x", i)})
	}
	topic, _ := f.metadata().Topic("t")
	if len(topic.CursorMoves) != maxCursorMoves || topic.Cursor != 2+2*maxCursorMoves {
		t.Fatalf("moves kept = %d, cursor %d", len(topic.CursorMoves), topic.Cursor)
	}
	// get-a has left the window: its replay cannot be judged any more. Nor
	// can a move from a cursor older than every remembered move.
	idx := uint64(7 + 2*maxCursorMoves)
	for _, c := range []Command{move, {Type: CmdAdvanceCursor, Topic: "t", From: 1, To: 2, Token: "get-e"}} {
		if r := applyOne(t, f, idx, c); r.Applied || !r.TokenForgotten || r.Cursor != 2+2*maxCursorMoves {
			t.Fatalf("replay of %s from %d after the window = %+v; want not applied, token forgotten", c.Token, c.From, r)
		}
		idx++
	}
	// The oldest move remembered started at 2+maxCursorMoves: a move from
	// there lost the race for certain (and one in the window is known).
	oldest := uint64(2 + maxCursorMoves)
	if r := applyOne(t, f, idx, Command{Type: CmdAdvanceCursor, Topic: "t", From: oldest, To: oldest + 1, Token: "get-f"}); r.Applied || r.TokenForgotten {
		t.Fatalf("move from the oldest remembered cursor = %+v; want cursor moved", r)
	}
	last := Command{Type: CmdAdvanceCursor, Topic: "t", From: oldest, To: oldest + 1, Token: fmt.Sprint("x", maxCursorMoves)}
	if r := applyOne(t, f, idx+1, last); !r.Applied || r.Reason != "already applied" {
		t.Fatalf("replay of the oldest remembered move = %+v", r)
	}
	// The window survives a snapshot.
	snap, _ := f.Snapshot()
	var sink sinkBuffer
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	g := newFSM()
	if err := g.Restore(io.NopCloser(&sink.Buffer)); err != nil {
		t.Fatal(err)
	}
	if r := applyOne(t, g, idx+2, last); !r.Applied || r.Reason != "already applied" {
		t.Fatalf("replay after a restore = %+v", r)
	}
}

func TestFSM_NodeIdentity(t *testing.T) {
	f, res := applyAll(t, node(1))
	if !res[0].Applied {
		t.Fatalf("upsert = %+v", res[0])
	}
	// The same node, new address: an update.
	moved := node(1)
	moved.Node.RaftAddr = "10.0.0.1:6001"
	if r := applyOne(t, f, 2, moved); !r.Applied {
		t.Fatalf("address update = %+v", r)
	}
	// The same id from another data directory: refused.
	wiped := node(1)
	wiped.Node.UUID = "another"
	if r := applyOne(t, f, 3, wiped); r.Applied || !strings.Contains(r.Reason, ErrNodeReplaced.Error()) {
		t.Fatalf("wiped node upsert = %+v", r)
	}
	if n, _ := f.metadata().Node(1); n.RaftAddr != "10.0.0.1:6001" || n.UUID != "uuid-b" {
		t.Fatalf("node 1 = %+v", n)
	}
	if r := applyOne(t, f, 4, Command{Type: CmdRemoveNode, NodeID: 1}); !r.Applied {
		t.Fatalf("remove = %+v", r)
	}
	if r := applyOne(t, f, 5, wiped); !r.Applied {
		t.Fatalf("upsert after removal = %+v", r)
	}
}

func TestFSM_InvalidCommandsAreSkippedAlike(t *testing.T) {
	f := newFSM()
	for i, data := range [][]byte{[]byte("not json"), []byte(`{"type":"nope"}`), []byte(`{"type":"rollover","topic":"t"}`)} {
		res, _ := f.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: data}).(Result)
		if res.Applied || res.Reason == "" || res.Index != uint64(i+1) {
			t.Fatalf("invalid command %q = %+v", data, res)
		}
	}
	if f.metadata().Index != 3 {
		t.Fatalf("index after invalid commands = %d", f.metadata().Index)
	}
	// Non-command log entries (configuration changes, barriers) are ignored.
	if r := f.Apply(&raft.Log{Index: 4, Type: raft.LogConfiguration}); r != nil {
		t.Fatalf("configuration entry = %v", r)
	}
}

// Retention deletes a topic's oldest sealed segments: never an open or
// pending one or anything after it, never twice, and the shared cursor and
// STATE's sealed entry count do not go back.
func TestFSM_TrimTopic(t *testing.T) {
	f, _ := applyAll(t, node(1), node(2),
		Command{Type: CmdCreateTopic, Topic: "t", NodeID: 1, MaxEntries: 10}, // index 3
		Command{Type: CmdRollover, Topic: "t", Segment: 1, Epoch: 3, Count: 10, Bytes: 1000, Time: 111, NodeID: 2, MaxEntries: 10},
		Command{Type: CmdRollover, Topic: "t", Segment: 2, Epoch: 4, Count: 8, Bytes: 800, Time: 222, NodeID: 1, MaxEntries: 10},
		Command{Type: CmdFailover, Topic: "t", Segment: 3, Epoch: 5, NodeID: 2, MaxEntries: 10}, // index 6: 3 pending
		Command{Type: CmdRollover, Topic: "t", Segment: 4, Epoch: 6, Count: 10, NodeID: 1, MaxEntries: 10},
		Command{Type: CmdAdvanceCursor, Topic: "t", From: 0, To: 4}, // index 8
	)
	topic, _ := f.metadata().Topic("t")
	if s1, _ := topic.Segment(1); s1.Bytes != 1000 || s1.SealedAt != 111 {
		t.Fatalf("segment 1 = %+v: the rollover's bytes and time are not recorded", s1)
	}
	sealedBefore := topic.SealedEntries()
	for _, c := range []Command{
		{Type: CmdTrimTopic, Topic: "t", Segment: 1}, // the topic starts there
		{Type: CmdTrimTopic, Topic: "t", Segment: 4}, // 3 is pending
		{Type: CmdTrimTopic, Topic: "t", Segment: 6}, // past the open segment, 5
		{Type: CmdTrimTopic, Topic: "nope", Segment: 2},
	} {
		if r := applyOne(t, f, 9, c); r.Applied {
			t.Fatalf("trim %+v applied: %+v", c, r)
		}
	}
	if r := applyOne(t, f, 10, Command{Type: CmdTrimTopic, Topic: "t", Segment: 3}); !r.Applied || r.Cursor != 18 {
		t.Fatalf("trim to segment 3 = %+v, want applied with the cursor at 18", r)
	}
	topic, _ = f.metadata().Topic("t")
	if topic.Segments[0].ID != 3 || topic.FirstOffset() != 18 || topic.Cursor != 18 {
		t.Fatalf("after the trim: first segment %d, first offset %d, cursor %d; want 3, 18, 18",
			topic.Segments[0].ID, topic.FirstOffset(), topic.Cursor)
	}
	if got := topic.SealedEntries(); got != sealedBefore {
		t.Fatalf("sealed entries %d after the trim, %d before", got, sealedBefore)
	}
	if r := applyOne(t, f, 11, Command{Type: CmdTrimTopic, Topic: "t", Segment: 2}); r.Applied {
		t.Fatalf("a stale trim applied: %+v", r)
	}
	// Once 3 is finalized, trimming past it applies; the cursor, already
	// past segment 5's base (38: 3 reserved 10 offsets), stays.
	applyOne(t, f, 12, Command{Type: CmdFinalizeSeal, Topic: "t", Segment: 3, Epoch: 5, Count: 2, Bytes: 200, Time: 333})
	applyOne(t, f, 13, Command{Type: CmdAdvanceCursor, Topic: "t", From: 18, To: 40})
	if r := applyOne(t, f, 14, Command{Type: CmdTrimTopic, Topic: "t", Segment: 5}); !r.Applied || r.Cursor != 40 {
		t.Fatalf("trim to segment 5 = %+v", r)
	}
	topic, _ = f.metadata().Topic("t")
	if len(topic.Segments) != 1 || topic.Open().ID != 5 || topic.SealedEntries() != 30 {
		t.Fatalf("after trimming every sealed segment: %+v, sealed entries %d", topic.Segments, topic.SealedEntries())
	}
}

// The state is a pure function of the log: applying the same commands to
// two FSMs gives equal metadata, and earlier snapshots are not changed by
// later commands.
func TestFSM_DeterministicAndImmutable(t *testing.T) {
	cmds := []Command{node(1), node(2), node(3)}
	for i := range 20 {
		cmds = append(cmds, Command{Type: CmdCreateTopic, Topic: string(rune('a' + i)), NodeID: NodeID(1 + i%3), MaxEntries: 5})
	}
	a, _ := applyAll(t, cmds...)
	before := a.metadata()
	topicBefore, _ := before.Topic("a")
	applyOne(t, a, 24, Command{Type: CmdRollover, Topic: "a", Segment: 1, Epoch: 4, Count: 5, NodeID: 2, MaxEntries: 5})
	if len(topicBefore.Segments) != 1 || before.Index != 23 {
		t.Fatal("an earlier snapshot changed after a later apply")
	}
	b, _ := applyAll(t, cmds...)
	applyOne(t, b, 24, Command{Type: CmdRollover, Topic: "a", Segment: 1, Epoch: 4, Count: 5, NodeID: 2, MaxEntries: 5})
	if !metadataEqual(a.metadata(), b.metadata()) {
		t.Fatal("two FSMs fed the same log differ")
	}
}

// sinkBuffer is a raft.SnapshotSink over a buffer.
type sinkBuffer struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *sinkBuffer) ID() string    { return "test" }
func (s *sinkBuffer) Close() error  { s.closed = true; return nil }
func (s *sinkBuffer) Cancel() error { s.cancelled = true; return nil }

func TestFSM_SnapshotRestoreRoundTrip(t *testing.T) {
	f, _ := applyAll(t, node(1), node(2),
		Command{Type: CmdCreateTopic, Topic: "a", NodeID: 1, MaxEntries: 10},
		Command{Type: CmdCreateTopic, Topic: "b/c d", NodeID: 2, MaxEntries: 10},
		Command{Type: CmdRollover, Topic: "a", Segment: 1, Epoch: 3, Count: 10, NodeID: 2, MaxEntries: 10},
		Command{Type: CmdFailover, Topic: "a", Segment: 2, Epoch: 5, NodeID: 1, MaxEntries: 10},
		Command{Type: CmdAdvanceCursor, Topic: "a", From: 0, To: 4},
		Command{Type: CmdCommitGroup, Topic: "b/c d", Group: "g", Offset: 9},
		Command{Type: CmdSetCapture, Topic: "b/c d", Subjects: []string{"x.>"}},
		Command{Type: CmdRollover, Topic: "b/c d", Segment: 1, Epoch: 4, Count: 3, Bytes: 300, Time: 42, NodeID: 1, MaxEntries: 10},
		Command{Type: CmdTrimTopic, Topic: "b/c d", Segment: 2},
	)
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink sinkBuffer
	if err := snap.Persist(&sink); err != nil || !sink.closed {
		t.Fatalf("persist: %v (closed %v)", err, sink.closed)
	}
	g := newFSM()
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if !metadataEqual(f.metadata(), g.metadata()) {
		t.Fatalf("restored metadata differs:\n%+v\n%+v", dump(f.metadata()), dump(g.metadata()))
	}
	// The restored FSM keeps applying from where the snapshot ended.
	if r := applyOne(t, g, 11, Command{Type: CmdAdvanceCursor, Topic: "a", From: 4, To: 5}); !r.Applied {
		t.Fatalf("apply after restore = %+v", r)
	}
	// A damaged snapshot is refused, not half-applied.
	h := newFSM()
	if err := h.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()[:sink.Len()/2]))); err == nil {
		t.Fatal("restoring half a snapshot succeeded")
	}
	if h.metadata().NumTopics() != 0 {
		t.Fatal("a failed restore changed the state")
	}
}

func TestFSM_WaitIndex(t *testing.T) {
	f := newFSM()
	done := make(chan error, 1)
	go func() { done <- f.waitIndex(context.Background(), 2) }()
	applyOne(t, f, 1, node(1))
	select {
	case err := <-done:
		t.Fatalf("waitIndex returned at index 1: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	applyOne(t, f, 2, node(2))
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waitIndex did not return after index 2")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := f.waitIndex(ctx, 99); err == nil {
		t.Fatal("waitIndex with a cancelled context succeeded")
	}
}

func dump(m *Metadata) snapshotState {
	st := snapshotState{Index: m.Index, Nodes: m.Nodes()}
	for _, name := range m.TopicNames() {
		t, _ := m.Topic(name)
		st.Topics = append(st.Topics, t)
	}
	return st
}

func metadataEqual(a, b *Metadata) bool { return reflect.DeepEqual(dump(a), dump(b)) }
