package storage

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// SegmentID numbers a topic's segments: 1, 2, 3, ...
type SegmentID uint64

// Offset is a topic offset: dense, 0-based, across segments.
type Offset uint64

// MaxTopicLen is the longest topic name, in bytes, the log stores.
const MaxTopicLen = 255

// Segment file layout constants; see doc.go.
const (
	dataStart        = 4096 // the header block; frames start here
	segHeaderFixed   = 64
	segHeaderVersion = 1
	segMagic         = "WLRSSEG\x01"
	idxMagic         = "WLRSIDX\x01"
	topicsDir        = "topics"
	lockFile         = "LOCK"
	logExt           = ".log"
	idxExt           = ".idx"
	tmpExt           = ".tmp"
	discardedExt     = ".discarded"
)

// segmentFileName returns "<id:020d>.log": lexical order is segment order.
func segmentFileName(id SegmentID, ext string) string {
	return fmt.Sprintf("%020d%s", uint64(id), ext)
}

// parseSegmentFileName parses a "<id:020d>.log" name.
func parseSegmentFileName(name string) (SegmentID, bool) {
	base, ok := strings.CutSuffix(name, logExt)
	if !ok || len(base) != 20 {
		return 0, false
	}
	n, err := strconv.ParseUint(base, 10, 64)
	if err != nil {
		return 0, false
	}
	return SegmentID(n), true
}

// topicDirName maps a topic to its directory name: bytes in [A-Za-z0-9_-]
// and non-leading dots are kept, others are %XX-escaped. Names that would
// exceed the 255-byte file name limit use "~" and a hash instead; the topic's
// real name is always in every segment header, which is authoritative.
func topicDirName(topic string) string {
	var b strings.Builder
	for i := 0; i < len(topic); i++ {
		c := topic[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
			b.WriteByte(c)
		case c == '.' && i > 0:
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	if b.Len() <= 255 {
		return b.String()
	}
	sum := sha256.Sum256([]byte(topic))
	return "~" + hex.EncodeToString(sum[:16])
}

// segmentHeader is the fixed header at the start of every segment file.
type segmentHeader struct {
	topic   string
	id      SegmentID
	epoch   uint64
	base    Offset
	created int64 // Unix nanoseconds
}

// encode returns the dataStart-byte header block:
//
//	0  magic "WLRSSEG\x01"  8  version u16  10 topic length u16  12 reserved
//	16 segment id u64       24 epoch u64    32 base offset u64
//	40 created unix ns i64  48 reserved     56 crc32c u32        60 reserved
//	64 topic bytes, then zeros to 4096. The CRC covers [0,56) and the topic.
func (h *segmentHeader) encode() []byte {
	b := make([]byte, dataStart)
	copy(b[0:8], segMagic)
	binary.LittleEndian.PutUint16(b[8:10], segHeaderVersion)
	binary.LittleEndian.PutUint16(b[10:12], uint16(len(h.topic)))
	binary.LittleEndian.PutUint64(b[16:24], uint64(h.id))
	binary.LittleEndian.PutUint64(b[24:32], h.epoch)
	binary.LittleEndian.PutUint64(b[32:40], uint64(h.base))
	binary.LittleEndian.PutUint64(b[40:48], uint64(h.created))
	copy(b[segHeaderFixed:], h.topic)
	binary.LittleEndian.PutUint32(b[56:60], headerCRC(b, len(h.topic)))
	return b
}

func headerCRC(b []byte, topicLen int) uint32 {
	c := crc32.Update(0, crcTable, b[0:56])
	return crc32.Update(c, crcTable, b[segHeaderFixed:segHeaderFixed+topicLen])
}

// decodeSegmentHeader parses and verifies a header block.
func decodeSegmentHeader(b []byte) (segmentHeader, string) {
	if len(b) < dataStart {
		return segmentHeader{}, "file shorter than the segment header"
	}
	if string(b[0:8]) != segMagic {
		return segmentHeader{}, "bad magic"
	}
	if v := binary.LittleEndian.Uint16(b[8:10]); v != segHeaderVersion {
		return segmentHeader{}, fmt.Sprintf("unsupported segment format version %d", v)
	}
	tl := int(binary.LittleEndian.Uint16(b[10:12]))
	if tl == 0 || tl > MaxTopicLen {
		return segmentHeader{}, "bad topic length"
	}
	if binary.LittleEndian.Uint32(b[56:60]) != headerCRC(b, tl) {
		return segmentHeader{}, "header checksum mismatch"
	}
	h := segmentHeader{
		topic:   string(b[segHeaderFixed : segHeaderFixed+tl]),
		id:      SegmentID(binary.LittleEndian.Uint64(b[16:24])),
		epoch:   binary.LittleEndian.Uint64(b[24:32]),
		base:    Offset(binary.LittleEndian.Uint64(b[32:40])),
		created: int64(binary.LittleEndian.Uint64(b[40:48])),
	}
	if !validTopic(h.topic) {
		return segmentHeader{}, "invalid topic name in header"
	}
	return h, ""
}

// The durable mark lives in the header block's second 512-byte sector, apart
// from the header so that a torn write of one cannot damage the other:
//
//	512 magic "WLRSMRK\x01"  520 durable size u64  528 durable entry count u64
//	536 crc32c u32 of [512,536)
//
// It claims a prefix of the segment that was already synced when the mark was
// written, so it is a lower bound of what is durable. Recovery treats a bad
// frame below it as corruption of acknowledged data, never as a torn tail.
const (
	markPos   = 512
	markSize  = 28
	markMagic = "WLRSMRK\x01"
)

func encodeMark(size int64, count uint64) []byte {
	b := make([]byte, markSize)
	copy(b[0:8], markMagic)
	binary.LittleEndian.PutUint64(b[8:16], uint64(size))
	binary.LittleEndian.PutUint64(b[16:24], count)
	binary.LittleEndian.PutUint32(b[24:28], crc32.Checksum(b[:24], crcTable))
	return b
}

// decodeMark returns the durable size and count, or ok=false for a missing
// or damaged mark.
func decodeMark(b []byte) (size int64, count uint64, ok bool) {
	if len(b) < markSize || string(b[0:8]) != markMagic ||
		crc32.Checksum(b[:24], crcTable) != binary.LittleEndian.Uint32(b[24:28]) {
		return 0, 0, false
	}
	return int64(binary.LittleEndian.Uint64(b[8:16])), binary.LittleEndian.Uint64(b[16:24]), true
}

// createFileDurable creates path exclusively, writes data, and makes both the
// file and its directory entry durable before returning. On failure the file
// is removed, so that a retry can create it again (nothing was ever appended
// to it).
func createFileDurable(path string, data []byte) (_ *os.File, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(path)
		}
	}()
	if _, err := f.WriteAt(data, 0); err != nil {
		return nil, err
	}
	if err := f.Sync(); err != nil {
		return nil, &FsyncError{Err: err}
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	return f, nil
}

// syncDir fsyncs a directory so that entries created or removed in it are
// durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer func() { _ = d.Close() }() // read-only: the Sync result is what counts
	if err := d.Sync(); err != nil {
		return &FsyncError{Err: fmt.Errorf("directory %s: %w", dir, err)}
	}
	return nil
}

// mkdirDurable creates dir (and missing parents) and fsyncs the parent of
// every directory it created.
func mkdirDurable(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := mkdirDurable(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
		return err
	}
	return syncDir(parent)
}

// nowNanos is the append timestamp source.
func nowNanos() int64 { return time.Now().UnixNano() }
