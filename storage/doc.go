// Package storage is Walrus's per-node log engine: topics made of numbered
// segments, appended to with group commit, read by position while appends go
// on, and recovered after a crash without ever returning a corrupt entry. It
// knows nothing about Raft, NATS or sockets.
//
// # Model
//
// A topic holds segments 1, 2, 3, ... A segment is created open, with an
// epoch and a base offset (the topic offset of its first entry). Only appends
// carrying the segment's epoch are accepted (ErrEpochMismatch otherwise), so a
// writer whose lease lapsed is fenced by the storage itself. Seal appends a
// seal frame and returns the entry count taken from the log; a sealed segment
// is immutable and can later be deleted whole (retention). Entries have an
// index within their segment and a topic offset = base + index.
//
// # Files
//
//	<dir>/LOCK                                 flock: one process per directory
//	<dir>/topics/<topic>/<segment:020d>.log    header block + frames
//	<dir>/topics/<topic>/<segment:020d>.idx    sparse index of a sealed segment (a cache)
//	<dir>/topics/<topic>/<segment>.log.<ns>.discarded   a torn tail cut at recovery
//
// The topic directory name is the topic with bytes outside [A-Za-z0-9_.-]
// %XX-escaped (or "~" and a hash when too long); the name in the segment
// header is authoritative. Segment files sort lexically in segment order.
//
// # Segment file
//
//	0                                  4096
//	+----------------------------------+---------+---------+-----+------------+---------
//	| header block (see segmentHeader) | frame 0 | frame 1 | ... | seal frame | zeros...
//	+----------------------------------+---------+---------+-----+------------+---------
//
// The header block holds, in its first 512-byte sector, a magic number, the
// format version, the segment id, epoch, base offset, creation time and topic
// name under a CRC32C, and in its second sector the durable mark (see
// Recovery). Frames follow back to back from byte 4096. An open segment is pre-written with
// zeros ahead of its tail (under FsyncAlways) so that a group commit's
// fdatasync has no size or extent metadata to flush; sealing trims them.
//
// # Frame
//
//	0         4         8                   16        18        20
//	+---------+---------+-------------------+---------+---------+------------------+---------+
//	| size    | crc32c  | timestamp (ns)    | flags   | headers | header block     | payload |
//	| u32     | u32     | i64               | u16     | u16 (n) | n × (klen u16,   |         |
//	|         |         |                   |         |         |  vlen u32, k, v) |         |
//	+---------+---------+-------------------+---------+---------+------------------+---------+
//
// All integers are little endian. size is the whole frame's length (at least
// 20). The CRC32C (Castagnoli) covers the size field and bytes 8..size, so a
// corrupted length is caught like a corrupted body. Headers are key/value
// pairs in order, keys may repeat (NATS headers round-trip). Flag bit 0 marks
// the seal frame, whose 16-byte payload is the entry count and the epoch; it
// is not an entry. Flag bit 1 ("more") is set on every record of a
// multi-record Append but the last, so that recovery can drop an Append that
// did not reach the disk whole. Unknown flags are corruption. A frame is at
// most 1 GiB; Options.MaxEntryBytes bounds new appends only.
//
// # Index
//
// Each segment keeps a sparse index in memory: the position of one frame
// every IndexIntervalBytes (and of entry 0), so a read at any index scans at
// most that many bytes. Sealing writes it to the .idx file (tmp + rename, not
// synced: it is a cache validated against the .log on open).
//
// # Appends and group commit
//
// Each open segment has one owner goroutine. Append encodes and checksums its
// records in the caller's goroutine, then hands the buffer to the owner. The
// owner takes every request waiting in its queue (up to MaxBatchBytes), writes
// them with one pwritev or io_uring submission and, under FsyncAlways, one
// fdatasync, then publishes the new entries to readers and answers every
// caller. A batch is all or nothing for each Append. Under FsyncAlways readers
// only ever see durable entries, so an offset once read is never reused.
//
// Fsync policies: FsyncAlways (default: acked = on disk), FsyncInterval
// (acked = written; synced every FsyncInterval), FsyncNever (acked = written;
// synced by the kernel, Seal and Close). The interval and never policies
// survive a process crash but not a power loss.
//
// # I/O backends
//
// The pwrite backend issues pwritev(2) then fdatasync(2). The io_uring backend
// submits WRITEV SQEs linked (IOSQE_IO_LINK) to an FSYNC(DATASYNC) SQE in one
// io_uring_enter and checks every completion; rings are pooled, one per call
// in flight. Open probes io_uring and falls back to pwrite when it is
// unavailable (EPERM in Docker, ENOSYS in gVisor). Both pass the same
// contract tests; Log.Backend reports the active one.
//
// # Failure
//
// A failed write or fdatasync stops the segment's writer for good: that call
// and every later append get ErrFailed (a failure of the final sync at Close
// is returned by Close). After a failed fsync the kernel may
// have dropped the dirty pages and a retried fsync could report success for
// data that is not on disk ("fsyncgate"), so the engine never retries. The
// segment remains readable up to its last published entry.
//
// # Recovery
//
// A crash can tear only what was written after the last completed sync; bit
// rot can strike anywhere. To tell them apart each open segment keeps a
// durable mark (header sector 2: magic, size, entry count, CRC32C) claiming a
// prefix that was already synced when the mark was written. The writer
// rewrites it before a group commit's fdatasync whenever it lags by 1 MiB
// (the same sync makes it durable), and on Close claims the whole file.
//
// Open recovers every segment (see recoverSegment and scanSegment):
//
//   - a file no longer than its header block with a bad header is an
//     interrupted creation and is removed (no entry was ever written to it);
//   - a bad header in front of data, or a header naming another segment, is
//     corruption: the file is left untouched, not served, and listed by
//     Quarantined;
//   - a sealed segment whose .idx matches the file size, whose last frame is
//     the matching seal frame and whose last index point leads to it through
//     exactly the remaining entries is adopted without a scan. The points in
//     between are trusted: only the engine writes an .idx, from its own
//     index and under a CRC, and checking them would mean scanning the
//     segment the .idx exists to avoid scanning;
//   - otherwise every frame is verified from the start, stopping at the seal
//     frame, the end of file, or the first short or bad frame. Then:
//     a valid seal frame seals the segment;
//     a bad frame in a file that still ends with a valid seal frame is a
//     corrupt sealed segment: kept sealed at its count, the entries before
//     the damage served, nothing cut;
//     a bad frame (or the end of file) below the durable mark is damaged
//     acknowledged data: the segment is quarantined in place (Failed and
//     Corrupt in SegmentInfo, the prefix served, no appends, nothing cut);
//     anything else is a torn tail: an Append whose last records are
//     missing is dropped whole, zeros are kept as pre-written space, other
//     bytes are copied to a .discarded file and the segment is truncated, so
//     no stale frame can reappear behind later appends.
//
// Recovery syncs every segment it scanned, so that nothing it serves can
// vanish in a later power loss, and is idempotent. Reads verify every frame's
// CRC again; a bad frame below the published count is returned as a
// *CorruptionError (never as data) and marks the segment corrupt in
// SegmentInfo.
//
// # Locking
//
// Lock order: Log.createMu → Log.mu → segment.mu. segment.fileMu is taken
// alone (reads hold it shared while using the file; closing takes it
// exclusively), and fileCache.mu is never held while taking fileMu. The owner
// goroutine writes without locks and takes segment.mu only to publish.
package storage
