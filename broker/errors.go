package broker

import (
	"errors"
	"fmt"

	"github.com/walrus-edge/walrus/bridge"
	"github.com/walrus-edge/walrus/cluster"
	"github.com/walrus-edge/walrus/storage"
)

// Errors of the broker. They are mapped once, in remoteError and
// protocolMessage, to the internal RPC codes and the wire protocol.
var (
	// ErrUnknownTopic reports a topic that was never registered.
	ErrUnknownTopic = errors.New("unknown topic")
	// ErrInvalidTopic reports a topic name Walrus cannot store.
	ErrInvalidTopic = errors.New("invalid topic name")
	// ErrNotSegmentLeader reports an append routed with stale metadata: the
	// receiver does not lead that segment at that epoch. The sender
	// refreshes its metadata and retries.
	ErrNotSegmentLeader = errors.New("not the leader of the segment")
	// ErrRollingOver reports an append to a segment that is being sealed;
	// the sender retries on the next segment.
	ErrRollingOver = errors.New("segment is rolling over")
	// ErrNoLease reports a segment leader that has lost contact with the
	// Raft quorum: it acknowledges nothing until contact is back.
	ErrNoLease = errors.New("no contact with the cluster quorum")
	// ErrUnavailable reports data held by a node that cannot be reached.
	ErrUnavailable = errors.New("unavailable")
	// ErrTooLarge reports a batch that cannot fit in one segment.
	ErrTooLarge = errors.New("batch larger than a segment")
)

// errUnacknowledged reports an append that is durable but whose lease ran
// out during the write. It is deliberately not retryable (and maps to
// CodeInternal, which the bridge neither retries nor forgets): the records
// may be read later, and writing them again would duplicate them.
var errUnacknowledged = errors.New("lost contact with the cluster quorum during the write: the entries may be stored (outcome unknown)")

// retryable reports whether a forwarded or local append or read may succeed
// once the metadata moves on (a rollover, failover or leader change).
func retryable(err error) bool {
	return errors.Is(err, ErrNotSegmentLeader) || errors.Is(err, ErrRollingOver) ||
		errors.Is(err, bridge.ErrNotLeader) || errors.Is(err, bridge.ErrSealed) ||
		errors.Is(err, bridge.ErrEpochMismatch) || errors.Is(err, bridge.ErrUnavailable) ||
		errors.Is(err, cluster.ErrNotLeader) || errors.Is(err, cluster.ErrNoLeader) ||
		errors.Is(err, cluster.ErrOutcomeUnknown) || errors.Is(err, bridge.ErrAbandoned) ||
		errors.Is(err, storage.ErrSealed) || errors.Is(err, storage.ErrEpochMismatch) ||
		errors.Is(err, storage.ErrSegmentFull) || errors.Is(err, ErrNoLease) || errors.Is(err, ErrUnavailable)
}

// remoteError converts a handler error for the internal RPC.
func remoteError(err error) error {
	code := bridge.CodeInternal
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrUnknownTopic):
		code = bridge.CodeUnknownTopic
	case errors.Is(err, ErrNotSegmentLeader), errors.Is(err, cluster.ErrNotLeader):
		code = bridge.CodeNotLeader
	case errors.Is(err, storage.ErrEpochMismatch):
		code = bridge.CodeEpochMismatch
	case errors.Is(err, storage.ErrSealed), errors.Is(err, ErrRollingOver), errors.Is(err, storage.ErrSegmentFull):
		code = bridge.CodeSealed
	case errors.Is(err, storage.ErrOffsetOutOfRange), errors.Is(err, ErrTrimmed):
		code = bridge.CodeOutOfRange
	case errors.Is(err, storage.ErrCorrupt):
		code = bridge.CodeCorrupt
	case errors.Is(err, ErrNoLease), errors.Is(err, ErrUnavailable), errors.Is(err, cluster.ErrNoLeader),
		errors.Is(err, cluster.ErrOutcomeUnknown),
		errors.Is(err, storage.ErrClosed), errors.Is(err, cluster.ErrShutdown):
		code = bridge.CodeUnavailable
	}
	return &bridge.RemoteError{Code: code, Message: err.Error()}
}

// unknownTopic builds the original's "unknown topic <t>" error.
func unknownTopic(topic string) error { return fmt.Errorf("%w %s", ErrUnknownTopic, topic) }
