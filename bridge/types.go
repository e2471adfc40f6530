package bridge

import "context"

// Header is one message header. Keys may repeat; order is preserved.
type Header struct{ Key, Value string }

// Record is one message as a producer hands it over: a timestamp (Unix
// nanoseconds, set by the producer or the receiving node), optional headers
// and the payload.
type Record struct {
	Timestamp int64
	Headers   []Header
	Value     []byte
}

// Entry is a stored record with its position: the segment, the index inside
// the segment and the topic offset.
type Entry struct {
	Segment uint64
	Index   uint64
	Offset  uint64
	Record
}

// AppendRequest asks a segment's leader to append records to the segment
// opened at Epoch. Append is not idempotent: the bridge deduplicates retries
// (see doc.go, "Retries and deduplication").
type AppendRequest struct {
	Topic   string
	Segment uint64
	Epoch   uint64
	Records []Record
}

// AppendResponse reports where the first appended record landed: its index in
// the segment and its topic offset. The others follow densely.
type AppendResponse struct {
	FirstIndex  uint64
	FirstOffset uint64
}

// ReadRequest asks a segment's leader for up to MaxEntries entries (and about
// MaxBytes of payload) from position Index of a segment.
type ReadRequest struct {
	Topic      string
	Segment    uint64
	Index      uint64
	MaxEntries int
	MaxBytes   int64
}

// ReadResponse carries the entries read, the number of entries the segment
// holds now and whether it is sealed.
type ReadResponse struct {
	Entries []Entry
	Count   uint64
	Sealed  bool
}

// ProposeRequest forwards an encoded metadata command to the Raft leader.
// Proposals are deduplicated like appends.
type ProposeRequest struct {
	Command []byte
}

// ProposeResponse carries the Raft log index of the applied command and the
// FSM's answer.
type ProposeResponse struct {
	Index  uint64
	Result []byte
}

// Heartbeat is sent by every node to the Raft leader.
type Heartbeat struct {
	NodeID       uint64
	AppliedIndex uint64
	SentUnixNano int64
	// Leaving says the node is stopping: the Raft leader places no new
	// segment or topic on it until it reports again without it.
	Leaving bool
}

// HeartbeatAck is the leader's answer to a Heartbeat.
type HeartbeatAck struct {
	LeaderID uint64
	Term     uint64
	// LastIndex is the leader's last Raft log index when it answered: every
	// metadata change proposed before then (a failover included) is at or
	// below it.
	LastIndex uint64
	// PeerFailing reports that the leader's Raft replication to the sender
	// is failing: the sender may be cut off from the Raft traffic even
	// though this heartbeat got through.
	PeerFailing bool
}

// Handler serves the internal RPCs addressed to this node. The broker
// implements it. Each call runs on its own goroutine with a context that is
// cancelled when the bridge shuts down; Shutdown waits for the call to
// return, so a handler must honour ctx. A returned *RemoteError (or an error
// wrapping one of the code sentinels such as ErrNotLeader) travels to the
// caller with its code; any other error arrives as CodeInternal with its
// message. Return CodeUnavailable only when nothing was applied: the caller
// retries it, and a deduplicated request is then run again.
//
// Byte slices in requests alias the received message, which the bridge never
// reuses, so the handler may keep them.
type Handler interface {
	Append(ctx context.Context, req AppendRequest) (AppendResponse, error)
	Read(ctx context.Context, req ReadRequest) (ReadResponse, error)
	Propose(ctx context.Context, req ProposeRequest) (ProposeResponse, error)
	Heartbeat(ctx context.Context, hb Heartbeat) (HeartbeatAck, error)
}
