package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"sort"
)

// indexEntry maps an entry index to the byte position of its frame.
type indexEntry struct {
	idx uint64
	pos int64
}

// sparseIndex records the position of one frame every interval bytes, so a
// read at any index scans at most interval bytes (plus one frame) from the
// nearest point. Index 0 is always recorded. The owner goroutine appends;
// readers look up under the segment's read lock.
type sparseIndex struct {
	interval int64
	entries  []indexEntry
}

// add records the frame of entry idx at pos if it is the first frame or at
// least interval bytes past the last recorded one. Frames must be added in
// order.
func (x *sparseIndex) add(idx uint64, pos int64) {
	n := len(x.entries)
	if n == 0 || pos-x.entries[n-1].pos >= x.interval {
		x.entries = append(x.entries, indexEntry{idx: idx, pos: pos})
	}
}

// lookup returns the last recorded entry with index <= idx. Entry 0 always
// starts at dataStart, so an empty index (a segment whose first frame is
// damaged) answers with it.
func (x *sparseIndex) lookup(idx uint64) indexEntry {
	i := sort.Search(len(x.entries), func(i int) bool { return x.entries[i].idx > idx })
	if i == 0 {
		return indexEntry{idx: 0, pos: dataStart}
	}
	return x.entries[i-1]
}

// truncate drops every entry at or after index count.
func (x *sparseIndex) truncate(count uint64) {
	i := sort.Search(len(x.entries), func(i int) bool { return x.entries[i].idx >= count })
	x.entries = x.entries[:i]
}

// The .idx file caches a sealed segment's sparse index so that opening the
// log does not scan sealed segments:
//
//	0  magic "WLRSIDX\x01"  8  segment id u64  16 entry count u64
//	24 data end u64 (file size of the sealed .log)   32 points n u64
//	40 n × (index u64, position u64)           then crc32c u32 of all before
//
// It is written after the seal frame is durable, through a temporary file
// and a rename, and not fsynced: it is a cache. Any mismatch with the .log
// file discards it and the segment is rescanned.
type indexFile struct {
	id      SegmentID
	count   uint64
	dataEnd int64
	points  []indexEntry
}

const idxFixed = 40

func (f *indexFile) encode() []byte {
	b := make([]byte, idxFixed, idxFixed+16*len(f.points)+4)
	copy(b[0:8], idxMagic)
	binary.LittleEndian.PutUint64(b[8:16], uint64(f.id))
	binary.LittleEndian.PutUint64(b[16:24], f.count)
	binary.LittleEndian.PutUint64(b[24:32], uint64(f.dataEnd))
	binary.LittleEndian.PutUint64(b[32:40], uint64(len(f.points)))
	for _, p := range f.points {
		b = binary.LittleEndian.AppendUint64(b, p.idx)
		b = binary.LittleEndian.AppendUint64(b, uint64(p.pos))
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
}

var errBadIndex = errors.New("invalid index file")

func decodeIndexFile(b []byte) (indexFile, error) {
	if len(b) < idxFixed+4 || string(b[0:8]) != idxMagic {
		return indexFile{}, errBadIndex
	}
	body := b[:len(b)-4]
	if crc32.Checksum(body, crcTable) != binary.LittleEndian.Uint32(b[len(b)-4:]) {
		return indexFile{}, errBadIndex
	}
	n := binary.LittleEndian.Uint64(b[32:40])
	if n > uint64(len(body)-idxFixed)/16 || uint64(len(body)-idxFixed) != n*16 {
		return indexFile{}, errBadIndex
	}
	f := indexFile{
		id:      SegmentID(binary.LittleEndian.Uint64(b[8:16])),
		count:   binary.LittleEndian.Uint64(b[16:24]),
		dataEnd: int64(binary.LittleEndian.Uint64(b[24:32])),
		points:  make([]indexEntry, n),
	}
	prev := indexEntry{}
	for i := range f.points {
		o := idxFixed + 16*i
		p := indexEntry{
			idx: binary.LittleEndian.Uint64(b[o : o+8]),
			pos: int64(binary.LittleEndian.Uint64(b[o+8 : o+16])),
		}
		if p.pos < dataStart || p.pos >= f.dataEnd || (i > 0 && (p.idx <= prev.idx || p.pos <= prev.pos)) {
			return indexFile{}, errBadIndex
		}
		f.points[i], prev = p, p
	}
	if f.count > 0 && (n == 0 || f.points[0].idx != 0 || f.points[0].pos != dataStart) {
		return indexFile{}, errBadIndex
	}
	return f, nil
}

// writeIndexFile replaces path with f's encoding via a temporary file.
func writeIndexFile(path string, f *indexFile) error {
	tmp := path + tmpExt
	if err := os.WriteFile(tmp, f.encode(), 0o644); err != nil {
		return fmt.Errorf("write index %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp) // best effort: the rename error is reported
		return fmt.Errorf("install index %s: %w", path, err)
	}
	return nil
}

// readIndexFile loads and verifies path; a missing or invalid file is an error.
func readIndexFile(path string) (indexFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return indexFile{}, err
	}
	return decodeIndexFile(b)
}
