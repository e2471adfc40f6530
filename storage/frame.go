package storage

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"time"
	"unicode/utf8"
)

// Frame layout (little endian); see doc.go for the full file format.
const (
	frameHeaderSize = 20      // size u32, crc u32, timestamp i64, flags u16, header count u16
	maxFrameSize    = 1 << 30 // hard ceiling on one frame, whatever the options say

	frameFlagSeal  = 1 << 0 // control frame that seals the segment
	frameFlagMore  = 1 << 1 // more records of the same Append follow this one
	frameKnownFlag = frameFlagSeal | frameFlagMore

	sealPayloadSize = 16 // count u64, epoch u64
	sealFrameSize   = frameHeaderSize + sealPayloadSize

	maxHeaderKey   = 1<<16 - 1
	maxHeaderCount = 1<<16 - 1
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Header is one key/value pair stored with an entry. Keys may repeat and
// order is preserved, so NATS headers round-trip unchanged.
type Header struct {
	Key   string
	Value string
}

// Record is what a caller appends.
type Record struct {
	// Timestamp in Unix nanoseconds; 0 means the time of the append.
	Timestamp int64
	// Headers are optional key/value pairs.
	Headers []Header
	// Value is the payload; it may be empty.
	Value []byte
}

// Entry is a record read back, with its position.
type Entry struct {
	Record
	// Segment holds the entry.
	Segment SegmentID
	// Index is the entry's 0-based position within its segment.
	Index uint64
	// Offset is the entry's topic offset: the segment's base offset + Index.
	Offset Offset
}

// frameSize returns the encoded size of r.
func frameSize(r *Record) int64 {
	n := int64(frameHeaderSize) + int64(len(r.Value))
	for _, h := range r.Headers {
		n += 6 + int64(len(h.Key)) + int64(len(h.Value))
	}
	return n
}

// validateRecord checks what the frame format cannot carry.
func validateRecord(r *Record) error {
	if len(r.Headers) > maxHeaderCount {
		return errors.New("too many headers")
	}
	for _, h := range r.Headers {
		if len(h.Key) > maxHeaderKey {
			return errors.New("header key longer than 65535 bytes")
		}
	}
	return nil
}

// appendFrame encodes r after dst. ts replaces a zero r.Timestamp. The caller
// has checked r with validateRecord and bounded frameSize(r).
func appendFrame(dst []byte, r *Record, ts int64) []byte {
	return appendFrameFlags(dst, r, ts, 0)
}

// appendFrameFlags is appendFrame with frame flags (frameFlagMore on every
// record of a multi-record Append but the last).
func appendFrameFlags(dst []byte, r *Record, ts int64, flags uint16) []byte {
	if r.Timestamp != 0 {
		ts = r.Timestamp
	}
	start := len(dst)
	size := frameSize(r)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(size))
	dst = binary.LittleEndian.AppendUint32(dst, 0) // crc, filled below
	dst = binary.LittleEndian.AppendUint64(dst, uint64(ts))
	dst = binary.LittleEndian.AppendUint16(dst, flags)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(r.Headers)))
	for _, h := range r.Headers {
		dst = binary.LittleEndian.AppendUint16(dst, uint16(len(h.Key)))
		dst = binary.LittleEndian.AppendUint32(dst, uint32(len(h.Value)))
		dst = append(dst, h.Key...)
		dst = append(dst, h.Value...)
	}
	dst = append(dst, r.Value...)
	putFrameCRC(dst[start:])
	return dst
}

// appendSealFrame encodes the control frame that seals a segment holding
// count entries at epoch.
func appendSealFrame(dst []byte, count, epoch uint64) []byte {
	start := len(dst)
	dst = binary.LittleEndian.AppendUint32(dst, sealFrameSize)
	dst = binary.LittleEndian.AppendUint32(dst, 0)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(time.Now().UnixNano()))
	dst = binary.LittleEndian.AppendUint16(dst, frameFlagSeal)
	dst = binary.LittleEndian.AppendUint16(dst, 0)
	dst = binary.LittleEndian.AppendUint64(dst, count)
	dst = binary.LittleEndian.AppendUint64(dst, epoch)
	putFrameCRC(dst[start:])
	return dst
}

// frameCRC is CRC32C over the size field and everything after the crc field,
// so a corrupted size is caught as well as a corrupted body.
func frameCRC(f []byte) uint32 {
	c := crc32.Update(0, crcTable, f[0:4])
	return crc32.Update(c, crcTable, f[8:])
}

func putFrameCRC(f []byte) {
	binary.LittleEndian.PutUint32(f[4:8], frameCRC(f))
}

// frameStatus classifies the bytes at a frame position.
type frameStatus int

const (
	frameOK    frameStatus = iota
	frameShort             // the buffer ends inside the frame: read more, or a torn tail
	frameBad               // checksum or structure invalid
)

// frame is a decoded frame. value and header strings alias nothing: headers
// are copied into strings, value aliases the input buffer.
type frame struct {
	size    int64
	ts      int64
	flags   uint16
	headers []Header
	value   []byte
}

func (f *frame) isSeal() bool { return f.flags&frameFlagSeal != 0 }

// more reports that the next frame belongs to the same Append.
func (f *frame) more() bool { return f.flags&frameFlagMore != 0 }

// peekFrameSize returns the size field of the frame at b, or frameShort if b
// holds fewer than frameHeaderSize bytes, or frameBad if the size is
// impossible. Stored frames are bounded by the hard ceiling only, never by
// the current Options, so lowering MaxEntryBytes cannot make old data look
// corrupt.
func peekFrameSize(b []byte) (int64, frameStatus) {
	if len(b) < frameHeaderSize {
		return 0, frameShort
	}
	size := int64(binary.LittleEndian.Uint32(b[0:4]))
	if size < frameHeaderSize || size > maxFrameSize {
		return size, frameBad
	}
	return size, frameOK
}

// decodeFrame verifies and decodes the frame at the start of b. On failure it
// returns frameShort (b ends inside the frame) or frameBad with the reason.
// It never panics on arbitrary input.
func decodeFrame(b []byte) (frame, frameStatus, string) {
	size, st := peekFrameSize(b)
	if st == frameBad {
		return frame{}, frameBad, "invalid frame size"
	}
	if st == frameShort || int64(len(b)) < size {
		return frame{}, frameShort, "frame extends past end of data"
	}
	f := b[:size]
	if binary.LittleEndian.Uint32(f[4:8]) != frameCRC(f) {
		return frame{}, frameBad, "checksum mismatch"
	}
	fr := frame{
		size:  size,
		ts:    int64(binary.LittleEndian.Uint64(f[8:16])),
		flags: binary.LittleEndian.Uint16(f[16:18]),
	}
	if fr.flags&^frameKnownFlag != 0 {
		return frame{}, frameBad, "unknown frame flags"
	}
	nh := int(binary.LittleEndian.Uint16(f[18:20]))
	p := f[frameHeaderSize:]
	if fr.isSeal() {
		if nh != 0 || len(p) != sealPayloadSize || fr.more() {
			return frame{}, frameBad, "malformed seal frame"
		}
		fr.value = p
		return fr, frameOK, ""
	}
	if nh > 0 {
		fr.headers = make([]Header, nh)
	}
	for i := range nh {
		if len(p) < 6 {
			return frame{}, frameBad, "truncated header"
		}
		kl := int(binary.LittleEndian.Uint16(p[0:2]))
		vl := int64(binary.LittleEndian.Uint32(p[2:6]))
		p = p[6:]
		if int64(kl)+vl > int64(len(p)) {
			return frame{}, frameBad, "header overruns frame"
		}
		fr.headers[i] = Header{Key: string(p[:kl]), Value: string(p[kl : int64(kl)+vl])}
		p = p[int64(kl)+vl:]
	}
	fr.value = p
	return fr, frameOK, ""
}

// sealInfo decodes the payload of a seal frame.
func (f *frame) sealInfo() (count, epoch uint64) {
	return binary.LittleEndian.Uint64(f.value[0:8]), binary.LittleEndian.Uint64(f.value[8:16])
}

// validTopic reports whether name can be stored as a topic.
func validTopic(name string) bool {
	return name != "" && len(name) <= MaxTopicLen && utf8.ValidString(name)
}
