package storage

import (
	"errors"
	"fmt"
)

// Errors returned by the storage package. Callers test them with errors.Is;
// returned errors wrap them with the topic, segment and position involved.
var (
	// ErrClosed is returned by every call after Close.
	ErrClosed = errors.New("storage: log closed")
	// ErrInvalidOptions reports an Options value that fails validation.
	ErrInvalidOptions = errors.New("storage: invalid options")
	// ErrInvalidTopic reports a topic name that cannot be stored (empty,
	// too long, or not valid UTF-8).
	ErrInvalidTopic = errors.New("storage: invalid topic name")
	// ErrSegmentNotFound reports a (topic, segment) that this log does not hold.
	ErrSegmentNotFound = errors.New("storage: segment not found")
	// ErrSegmentExists reports a CreateSegment for a segment that already
	// exists with a different epoch or base offset, or is already sealed.
	ErrSegmentExists = errors.New("storage: segment already exists")
	// ErrEpochMismatch reports an append or seal that carries an epoch other
	// than the one the segment was opened with: the caller is not (or no
	// longer) the segment's writer.
	ErrEpochMismatch = errors.New("storage: epoch mismatch")
	// ErrSealed reports an append to, or a second seal of, a sealed segment.
	ErrSealed = errors.New("storage: segment sealed")
	// ErrNotSealed reports a delete of a segment that is still open.
	ErrNotSealed = errors.New("storage: segment not sealed")
	// ErrSegmentFull reports an append that would grow a segment past
	// Options.MaxSegmentBytes; the caller should roll over to a new segment.
	ErrSegmentFull = errors.New("storage: segment full")
	// ErrFailed reports an append to a segment whose writer stopped after a
	// failed write or fsync. The segment stays readable up to its last
	// durable entry but accepts no further writes (see doc.go, "Failure").
	ErrFailed = errors.New("storage: segment failed")
	// ErrCorrupt reports data that fails its checksum or framing. The
	// concrete error is a *CorruptionError.
	ErrCorrupt = errors.New("storage: corrupt data")
	// ErrOffsetOutOfRange reports a read position past the end of a segment
	// or a topic offset this log does not hold.
	ErrOffsetOutOfRange = errors.New("storage: offset out of range")
	// ErrEntryTooLarge reports a record whose encoded frame exceeds
	// Options.MaxEntryBytes.
	ErrEntryTooLarge = errors.New("storage: entry too large")
	// ErrBatchTooLarge reports a batch whose encoded size exceeds
	// Options.MaxBatchBytes.
	ErrBatchTooLarge = errors.New("storage: batch too large")
	// ErrEmptyBatch reports an append of zero records.
	ErrEmptyBatch = errors.New("storage: empty batch")
)

// CorruptionError describes data that failed verification. It matches
// ErrCorrupt with errors.Is.
type CorruptionError struct {
	Path   string // file holding the data
	Pos    int64  // byte position of the bad frame or header
	Reason string // what failed, e.g. "checksum mismatch"
}

func (e *CorruptionError) Error() string {
	return fmt.Sprintf("storage: corrupt data in %s at byte %d: %s", e.Path, e.Pos, e.Reason)
}

// Unwrap makes errors.Is(err, ErrCorrupt) hold.
func (e *CorruptionError) Unwrap() error { return ErrCorrupt }

// FsyncError reports a failed fdatasync. After one, the segment's writer
// stops: the kernel may have dropped the dirty pages, so a retried sync could
// report success for data that never reached the disk ("fsyncgate").
type FsyncError struct {
	Err error
}

func (e *FsyncError) Error() string { return "storage: fdatasync: " + e.Err.Error() }

// Unwrap returns the system error.
func (e *FsyncError) Unwrap() error { return e.Err }
