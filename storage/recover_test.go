package storage

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Crash-recovery tests. They damage segment files the way a crash, a torn
// write or bit rot would, reopen the log and check the recovery rules of
// recover.go: no acknowledged entry below the damage is lost, no damaged
// entry is ever returned, a torn tail is kept aside in a .discarded file and
// cut so that new appends never sit behind stale frames, and recovery is
// idempotent. Recovery does not go through the I/O backend, so pwrite is
// enough.
//
// The durable mark in the header block decides what damage means. Bytes
// below it were acknowledged and synced, so damage there is corruption: the
// segment is quarantined in place (listed, readable up to the damage, never
// cut, refusing appends). Damage above it is what a crash leaves: a torn
// tail, cut back to the last whole Append. A cleanly closed open segment is
// marked durable to its end, so the torn-tail tests give their damaged files
// the mark a crash would have left: none, or one lagging behind the damage.

const (
	rTopic = "t"
	rEpoch = uint64(3)
	rBase  = Offset(10)
)

type recoveryConfig struct {
	name string
	opts Options
}

// recoveryConfigs are the layouts recovery must handle: an open segment
// carrying pre-written zeros after its last frame, and one ending exactly at
// its last frame. The prealloc step is kept small so that the exhaustive
// loops copy little; the default step is covered by TestRecover_Idempotent.
func recoveryConfigs() []recoveryConfig {
	base := Options{Backend: BackendPwrite, IndexIntervalBytes: 256}
	pre, no := base, base
	pre.PreallocBytes = 16 << 10
	no.PreallocBytes = -1
	return []recoveryConfig{{"prealloc", pre}, {"noprealloc", no}}
}

func segLogPath(dir, topic string, id SegmentID) string {
	return filepath.Join(dir, topicsDir, topicDirName(topic), segmentFileName(id, logExt))
}

func segIdxPath(dir, topic string, id SegmentID) string {
	return filepath.Join(dir, topicsDir, topicDirName(topic), segmentFileName(id, idxExt))
}

// segLogRel is segment id's .log of rTopic, relative to the log directory.
func segLogRel(id SegmentID) string {
	return filepath.Join(topicsDir, topicDirName(rTopic), segmentFileName(id, logExt))
}

// tornTailRecords are entries of varied sizes with explicit timestamps; the
// last three (the ones the exhaustive loops cut) include headers, an empty
// record and a plain value.
func tornTailRecords() []Record {
	return []Record{
		{Timestamp: 1001, Value: patterned(3000, 1)},
		{Timestamp: 1002, Headers: []Header{{"Nats-Msg-Id", "m1"}, {"X", "1"}, {"X", "2"}, {"", ""}}, Value: []byte("hdr")},
		{Timestamp: 1003},
		{Timestamp: 1004, Value: patterned(700, 2)},
		{Timestamp: 1005, Headers: []Header{{"k", "v"}, {"k", ""}, {"", "w"}}, Value: patterned(37, 3)},
		{Timestamp: 1006},
		{Timestamp: 1007, Headers: []Header{{"Nats-Msg-Id", "last"}}, Value: patterned(91, 4)},
	}
}

// sealedRecords are the entries of the sealed-segment tests: enough of them
// for several sparse index points at IndexIntervalBytes 256.
func sealedRecords(n int) []Record {
	recs := make([]Record, n)
	for i := range recs {
		recs[i] = Record{Timestamp: int64(5000 + i), Value: patterned(60+i*7%90, byte(i))}
		if i%4 == 1 {
			recs[i].Headers = []Header{{"i", fmt.Sprint(i)}, {"i", ""}}
		}
	}
	return recs
}

// defaultGroups is how writeSegment appends n records: the first two in one
// Append, the rest one by one.
func defaultGroups(n int) []int {
	groups := []int{min(2, n)}
	for range n - 2 {
		groups = append(groups, 1)
	}
	return groups
}

// encodeGroups returns recs encoded as frames from dataStart, as Appends of
// groups[0], groups[1], ... records write them (frameFlagMore on every
// record of an Append but its last), and the frame boundaries: bounds[i] is
// where entry i starts and bounds[len(recs)] where the last entry ends.
func encodeGroups(recs []Record, groups []int) ([]byte, []int64) {
	var b []byte
	bounds := []int64{dataStart}
	i := 0
	for _, g := range groups {
		for j := range g {
			var flags uint16
			if j < g-1 {
				flags = frameFlagMore
			}
			b = appendFrameFlags(b, &recs[i], 0, flags)
			bounds = append(bounds, dataStart+int64(len(b)))
			i++
		}
	}
	return b, bounds
}

// writeSegmentBounds returns the encoding of recs as frames from dataStart
// and their boundaries, as writeSegment lays them out.
func writeSegmentBounds(recs []Record) ([]byte, []int64) {
	return encodeGroups(recs, defaultGroups(len(recs)))
}

// writeSegment creates segment 1 of rTopic in a new log at dir, appends recs
// (the first two in one Append, the rest one by one), seals it if asked, and
// closes the log. It returns the .log file and the frame boundaries: bounds[i]
// is where entry i starts and bounds[len(recs)] where the last entry ends.
func writeSegment(t *testing.T, dir string, opts Options, recs []Record, seal bool) ([]byte, []int64) {
	t.Helper()
	return writeSegmentGroups(t, dir, opts, recs, defaultGroups(len(recs)), seal)
}

// writeSegmentGroups is writeSegment with the Appends given by groups (the
// number of records of each). It checks the layout the engine wrote: the
// frames of encodeGroups from dataStart; for an open segment, the durable
// mark its writer left on Close, claiming every frame; for a sealed one, no
// mark (sealing does not mark, and it was never closed while open).
func writeSegmentGroups(t *testing.T, dir string, opts Options, recs []Record, groups []int, seal bool) ([]byte, []int64) {
	t.Helper()
	l := openTest(t, dir, opts)
	mustCreate(t, l, rTopic, 1, rEpoch, rBase)
	i := 0
	for _, g := range groups {
		mustAppend(t, l, rTopic, 1, rEpoch, recs[i:i+g]...)
		i += g
	}
	if i != len(recs) {
		t.Fatalf("groups %v do not add up to %d records", groups, len(recs))
	}
	if seal {
		if n, err := l.Seal(context.Background(), rTopic, 1, rEpoch); err != nil || n != uint64(len(recs)) {
			t.Fatalf("Seal = %d, %v", n, err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	file := readFile(t, segLogPath(dir, rTopic, 1))
	frames, bounds := encodeGroups(recs, groups)
	for i := range recs {
		pos, end := bounds[i], bounds[i+1]
		if int64(len(file)) < end || !bytes.Equal(file[pos:end], frames[pos-dataStart:end-dataStart]) {
			t.Fatalf("entry %d is not at %d in the written file", i, pos)
		}
	}
	n := len(recs)
	if seal {
		if !allZero(markSector(file)) {
			t.Fatalf("sealed segment file has a durable mark %x; sealing does not mark", markSector(file))
		}
	} else if want := encodeMark(bounds[n], uint64(n)); !bytes.Equal(markSector(file), want) {
		t.Fatalf("closed open segment: durable mark %x, want %x claiming all %d entries up to %d", markSector(file), want, n, bounds[n])
	}
	return file, bounds
}

// markSector returns the durable mark's sector of a segment file.
func markSector(file []byte) []byte { return file[markPos : markPos+markSize] }

// withMark returns a copy of file whose durable mark claims size bytes and
// count entries.
func withMark(file []byte, size int64, count uint64) []byte {
	out := bytes.Clone(file)
	copy(out[markPos:], encodeMark(size, count))
	return out
}

// withoutMark returns a copy of file with no durable mark, as a segment is
// until its writer first marks it (on Close, or every markEvery bytes).
func withoutMark(file []byte) []byte {
	out := bytes.Clone(file)
	clear(out[markPos : markPos+markSize])
	return out
}

// durableOf returns the size the durable mark of file claims, or dataStart
// if it has no valid mark, as recovery reads it.
func durableOf(file []byte) int64 {
	if len(file) >= markPos+markSize {
		if size, _, ok := decodeMark(file[markPos : markPos+markSize]); ok {
			return size
		}
	}
	return dataStart
}

// crashImage gives file a durable mark that a crash could have left in
// front of damage to frame k and later, in a layout whose first Append holds
// two records (k >= 2): variant%3 picks no mark at all, a mark after the
// first Append, or a mark right at frame k (the batch from k on was the one
// in flight).
func crashImage(file []byte, bounds []int64, k, variant int) []byte {
	switch variant % 3 {
	case 0:
		return withoutMark(file)
	case 1:
		return withMark(file, bounds[2], 2)
	default:
		return withMark(file, bounds[k], uint64(k))
	}
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func flipBit(b []byte, bit int64) []byte {
	out := bytes.Clone(b)
	out[bit/8] ^= 1 << (bit % 8)
	return out
}

// framesBefore returns how many frames end at or before cut.
func framesBefore(bounds []int64, cut int64) int {
	k := 0
	for k+1 < len(bounds) && bounds[k+1] <= cut {
		k++
	}
	return k
}

// resetDir empties dir's topics and writes files (relative path →
// contents) into it. It removes the files it does not rewrite but keeps the
// directories and the LOCK file, and leaves a file's trailing zeros as a
// hole: on some file systems creating them, or syncing megabytes of
// pre-written zeros, costs more than a small recovery check. (An empty topic
// directory holds no segment; a hole reads as zeros.)
func resetDir(t testing.TB, dir string, files map[string][]byte) {
	t.Helper()
	err := filepath.WalkDir(filepath.Join(dir, topicsDir), func(p string, d os.DirEntry, err error) error {
		switch {
		case err != nil && os.IsNotExist(err) && d == nil:
			return filepath.SkipAll
		case err != nil:
			return err
		case d.IsDir():
			return nil
		}
		if rel, _ := filepath.Rel(dir, p); files[rel] != nil {
			return nil // rewritten below
		}
		return os.Remove(p)
	})
	if err != nil {
		t.Fatal(err)
	}
	for rel, b := range files {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		data := bytes.TrimRight(b, "\x00")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if len(data) < len(b) {
			if err := os.Truncate(p, int64(len(b))); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// topicFiles returns every file under dir/topics, by path relative to dir.
func topicFiles(t testing.TB, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	root := filepath.Join(dir, topicsDir)
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel] = readFile(t, p)
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return out
}

func discardedOf(files map[string][]byte) map[string][]byte {
	out := map[string][]byte{}
	for p, b := range files {
		if strings.HasSuffix(p, discardedExt) {
			out[p] = b
		}
	}
	return out
}

func sameFiles(a, b map[string][]byte) bool {
	return maps.EqualFunc(a, b, bytes.Equal)
}

func fileNames(m map[string][]byte) []string {
	return slices.Sorted(maps.Keys(m))
}

func infoString(infos []SegmentInfo) string {
	var b strings.Builder
	for _, s := range infos {
		fmt.Fprintf(&b, "{%s/%d epoch %d base %d count %d bytes %d sealed %v created %d failed %v corrupt %v}",
			s.Topic, s.ID, s.Epoch, s.Base, s.Count, s.Bytes, s.Sealed, s.Created.UnixNano(), s.Failed, s.Corrupt)
	}
	return b.String()
}

func quarantineString(qs []Quarantined) string {
	var b strings.Builder
	for _, q := range qs {
		fmt.Fprintf(&b, "{%s: %v}", q.Path, q.Err)
	}
	return b.String()
}

// readAll reads every entry of rTopic from rBase on.
func readAll(t testing.TB, l *Log) []Entry {
	t.Helper()
	es, err := l.ReadOffset(rTopic, rBase, ReadLimits{MaxEntries: 1 << 20, MaxBytes: 1 << 30})
	if err != nil {
		t.Fatalf("ReadOffset: %v", err)
	}
	return es
}

// checkEntries asserts that es are exactly want, as entries 0.. of segment 1.
func checkEntries(t testing.TB, label string, es []Entry, want []Record) {
	t.Helper()
	if len(es) != len(want) {
		t.Fatalf("%s: read %d entries, want %d", label, len(es), len(want))
	}
	for i, e := range es {
		if e.Segment != 1 || e.Index != uint64(i) || e.Offset != rBase+Offset(i) || !recordsMatch(e.Record, want[i]) {
			t.Fatalf("%s: entry %d = {seg %d idx %d off %d ts %d %d headers %q}, want ts %d %d headers %.40q",
				label, i, e.Segment, e.Index, e.Offset, e.Timestamp, len(e.Headers), e.Value, want[i].Timestamp, len(want[i].Headers), want[i].Value)
		}
	}
}

// afterCrash is the record appended after each recovery.
var afterCrash = Record{Timestamp: 777, Headers: []Header{{"after", "crash"}}, Value: []byte("appended after recovery")}

// readPanic is a panic of Read, caught by readNoPanic.
type readPanic struct{ v any }

func (p readPanic) Error() string { return fmt.Sprintf("Read panicked: %v", p.v) }

// readNoPanic is l.Read returning a panic as a readPanic error, so that a
// test can report it. (The panicking read may hold the segment's read lock:
// the caller must stop using that segment.)
func readNoPanic(l *Log, topic string, id SegmentID, from uint64, lim ReadLimits) (es []Entry, err error) {
	defer func() {
		if v := recover(); v != nil {
			es, err = nil, readPanic{v}
		}
	}()
	return l.Read(topic, id, from, lim)
}

// checkTornRecovery writes damaged as segment 1's .log in a fresh dir and
// checks that Open recovers an open segment holding exactly recs[:keep],
// whose frames end at keepEnd: the bytes after keepEnd are kept as
// pre-written space if they are all zeros, else copied to exactly one
// .discarded file and cut. damaged models a crash: its durable mark, if
// any, does not reach past keepEnd. The first Close marks the recovered
// frames durable (and changes nothing else); a second Open and Close then
// change nothing at all. With withAppend, a new entry is then appended,
// read back right after the kept ones, and survives another Close and Open,
// again without any change.
func checkTornRecovery(t *testing.T, dir string, opts Options, label string, recs []Record, damaged []byte, keep int, keepEnd int64, withAppend bool) {
	t.Helper()
	logRel := segLogRel(1)
	durable := durableOf(damaged)
	if durable > keepEnd {
		t.Fatalf("%s: test bug: the durable mark at %d covers the torn tail from %d", label, durable, keepEnd)
	}
	resetDir(t, dir, map[string][]byte{logRel: damaged})

	l := openTest(t, dir, opts)
	infos := l.Segments(rTopic)
	if len(infos) != 1 || infos[0].Count != uint64(keep) || infos[0].Bytes != keepEnd-dataStart ||
		infos[0].Sealed || infos[0].Failed != nil || infos[0].Corrupt {
		t.Fatalf("%s: segments = %s, want one open segment of %d entries, %d bytes", label, infoString(infos), keep, keepEnd-dataStart)
	}
	if q := l.Quarantined(); len(q) != 0 {
		t.Fatalf("%s: quarantined %s", label, quarantineString(q))
	}
	checkEntries(t, label, readAll(t, l), recs[:keep])
	files := topicFiles(t, dir)
	tail := damaged[keepEnd:]
	disc := discardedOf(files)
	if allZero(tail) {
		if !bytes.Equal(files[logRel], damaged) || len(disc) != 0 {
			t.Fatalf("%s: a zero tail of %d bytes was not kept as is (file %d bytes, want %d; discarded %v)",
				label, len(tail), len(files[logRel]), len(damaged), fileNames(disc))
		}
	} else {
		if !bytes.Equal(files[logRel], damaged[:keepEnd]) {
			t.Fatalf("%s: file is %d bytes after recovery, want the %d bytes before the torn tail", label, len(files[logRel]), keepEnd)
		}
		if len(disc) != 1 {
			t.Fatalf("%s: discarded files %v, want exactly one", label, fileNames(disc))
		}
		for name, b := range disc {
			if !bytes.Equal(b, tail) {
				t.Fatalf("%s: %s holds %d bytes, want the %d cut bytes", label, name, len(b), len(tail))
			}
		}
	}
	if len(files) != 1+len(disc) {
		t.Fatalf("%s: files after recovery %v", label, fileNames(files))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	// The first Close marks the recovered segment durable to its end,
	// unless the mark already said so; nothing else changes.
	closed := topicFiles(t, dir)
	wantLog := bytes.Clone(files[logRel])
	if durable < keepEnd {
		copy(wantLog[markPos:], encodeMark(keepEnd, uint64(keep)))
	}
	if !bytes.Equal(closed[logRel], wantLog) {
		t.Fatalf("%s: Close after recovery left mark %x (and %d bytes), want %x: the recovered file marked durable to %d",
			label, markSector(closed[logRel]), len(closed[logRel]), markSector(wantLog), keepEnd)
	}
	if !sameFiles(discardedOf(closed), disc) || len(closed) != len(files) {
		t.Fatalf("%s: Close after recovery changed the files: %v → %v", label, fileNames(files), fileNames(closed))
	}
	files = closed

	// Idempotent: a second recovery, and its Close, find nothing to do.
	l = openTest(t, dir, opts)
	if got := infoString(l.Segments(rTopic)); got != infoString(infos) {
		t.Fatalf("%s: second Open: segments %s, first Open %s", label, got, infoString(infos))
	}
	checkEntries(t, label+" (second Open)", readAll(t, l), recs[:keep])
	if after := topicFiles(t, dir); !sameFiles(after, files) {
		t.Fatalf("%s: second Open changed the files: %v → %v", label, fileNames(files), fileNames(after))
	}
	if !withAppend {
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if after := topicFiles(t, dir); !sameFiles(after, files) {
			t.Fatalf("%s: second Close changed the files", label)
		}
		return
	}

	// The segment takes appends right after the kept entries.
	res, err := l.Append(context.Background(), rTopic, 1, rEpoch, []Record{afterCrash})
	if err != nil || res.FirstIndex != uint64(keep) || res.FirstOffset != rBase+Offset(keep) {
		t.Fatalf("%s: Append after recovery = %+v, %v; want index %d", label, res, err, keep)
	}
	want := append(slices.Clone(recs[:keep]), afterCrash)
	checkEntries(t, label+" (after append)", readAll(t, l), want)
	infos = l.Segments(rTopic)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	files = topicFiles(t, dir)
	newEnd := keepEnd + frameSize(&afterCrash)
	if size, count, ok := decodeMark(markSector(files[logRel])); !ok || size != newEnd || count != uint64(keep+1) {
		t.Fatalf("%s: after append and Close the mark claims %d bytes, %d entries (valid %v); want %d, %d",
			label, size, count, ok, newEnd, keep+1)
	}
	l = openTest(t, dir, opts)
	if got := infoString(l.Segments(rTopic)); got != infoString(infos) {
		t.Fatalf("%s: reopen after append: segments %s, before %s", label, got, infoString(infos))
	}
	checkEntries(t, label+" (reopen after append)", readAll(t, l), want)
	if after := topicFiles(t, dir); !sameFiles(after, files) {
		t.Fatalf("%s: reopen after append changed the files", label)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

// checkQuarantinedInPlace writes damaged as segment 1's .log in a fresh dir
// and checks that Open quarantines it in place: damage below the durable
// mark is corruption of acknowledged entries, not a torn tail. The segment
// is listed (not in Quarantined, which is for bad headers) as failed
// (ErrFailed and ErrCorrupt, naming the damage at end) and corrupt, with
// count entries ending at end, all readable; Append and Seal fail with
// ErrFailed; not a byte of the file changes and no file is added, through
// Close and, with reopen, another Open.
func checkQuarantinedInPlace(t *testing.T, dir string, opts Options, label string, recs []Record, damaged []byte, count int, end int64, reopen bool) {
	t.Helper()
	if durable := durableOf(damaged); durable <= end {
		t.Fatalf("%s: test bug: the damage at %d is not below the durable mark at %d", label, end, durable)
	}
	files := map[string][]byte{segLogRel(1): damaged}
	resetDir(t, dir, files)
	ctx := context.Background()
	var first string
	for round := range 2 {
		if round == 1 && !reopen {
			break
		}
		l := openTest(t, dir, opts)
		infos := l.Segments(rTopic)
		if len(infos) != 1 || infos[0].Count != uint64(count) || infos[0].Bytes != end-dataStart ||
			infos[0].Sealed || !infos[0].Corrupt || infos[0].Failed == nil {
			t.Fatalf("%s (open %d): segments = %s, want one failed corrupt open segment of %d entries, %d bytes",
				label, round, infoString(infos), count, end-dataStart)
		}
		var ce *CorruptionError
		if f := infos[0].Failed; !errors.Is(f, ErrFailed) || !errors.Is(f, ErrCorrupt) || !errors.As(f, &ce) ||
			ce.Pos != end || ce.Path != segLogPath(dir, rTopic, 1) {
			t.Fatalf("%s (open %d): Failed = %v, want ErrFailed wrapping a *CorruptionError at %d", label, round, f, end)
		}
		if round == 0 {
			first = infoString(infos)
		} else if got := infoString(infos); got != first {
			t.Fatalf("%s: second Open: segments %s, first Open %s", label, got, first)
		}
		if q := l.Quarantined(); len(q) != 0 {
			t.Fatalf("%s (open %d): Quarantined() = %s; it lists bad headers only", label, round, quarantineString(q))
		}
		checkEntries(t, label, readAll(t, l), recs[:count])
		if es, err := l.Read(rTopic, 1, uint64(count), ReadLimits{}); len(es) != 0 || err != nil {
			t.Fatalf("%s: read at the count: %d entries, %v", label, len(es), err)
		}
		if _, err := l.Append(ctx, rTopic, 1, rEpoch, []Record{afterCrash}); !errors.Is(err, ErrFailed) {
			t.Fatalf("%s: Append to a quarantined segment: %v, want ErrFailed", label, err)
		}
		if _, err := l.Seal(ctx, rTopic, 1, rEpoch); !errors.Is(err, ErrFailed) {
			t.Fatalf("%s: Seal of a quarantined segment: %v, want ErrFailed", label, err)
		}
		if got := topicFiles(t, dir); !sameFiles(got, files) {
			t.Fatalf("%s (open %d): quarantining changed the files: %v", label, round, fileNames(got))
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if got := topicFiles(t, dir); !sameFiles(got, files) {
			t.Fatalf("%s (open %d): Close of a quarantined segment changed the files: %v", label, round, fileNames(got))
		}
	}
}

// checkPreallocLayout asserts the pristine open segment's layout: pre-written
// zeros after the last frame with prealloc, none without.
func checkPreallocLayout(t *testing.T, cfg recoveryConfig, file []byte, dataEnd int64) {
	t.Helper()
	if cfg.opts.PreallocBytes < 0 {
		if int64(len(file)) != dataEnd {
			t.Fatalf("without prealloc the file is %d bytes, want it to end at the last frame (%d)", len(file), dataEnd)
		}
		return
	}
	if int64(len(file)) <= dataEnd || !allZero(file[dataEnd:]) {
		t.Fatalf("with prealloc the file is %d bytes, want zeros after the last frame at %d", len(file), dataEnd)
	}
}

// A crash that cut the file anywhere in the last three frames (or in the
// pre-written zeros) loses only the frames it cut into: every complete frame
// before the cut is recovered byte for byte, the partial frame is kept aside
// and removed, and the segment continues right after the last whole frame.
// The same cut below the durable mark (the file was closed cleanly, then
// lost its end) loses acknowledged entries: the segment is quarantined in
// place, the file untouched, the entries before the cut readable.
func TestRecover_TornTailEveryOffset(t *testing.T) {
	for _, cfg := range recoveryConfigs() {
		t.Run(cfg.name, func(t *testing.T) {
			t.Parallel()
			recs := tornTailRecords()
			pristine, bounds := writeSegment(t, t.TempDir(), cfg.opts, recs, false)
			n := len(recs)
			dataEnd := bounds[n]
			checkPreallocLayout(t, cfg, pristine, dataEnd)
			work := filepath.Join(t.TempDir(), "log")
			for cut := bounds[n-3]; cut <= dataEnd; cut++ {
				keep := framesBefore(bounds, cut)
				label := fmt.Sprintf("cut at %d", cut)
				crashed := crashImage(pristine[:cut], bounds, n-3, int(cut))
				checkTornRecovery(t, work, cfg.opts, label, recs, crashed, keep, bounds[keep], cut%4 == 1)
				if cut < dataEnd {
					checkQuarantinedInPlace(t, work, cfg.opts, label+" below the mark", recs, pristine[:cut], keep, bounds[keep], cut%5 == 0)
				}
			}
			size := int64(len(pristine))
			if size == dataEnd {
				return
			}
			// Cuts inside the pre-written zeros lose nothing, marked or not.
			for i, cut := range []int64{dataEnd + 1, dataEnd + 7, dataEnd + 4096, (dataEnd + size) / 2, size - 1, size} {
				label := fmt.Sprintf("cut in zeros at %d", cut)
				checkTornRecovery(t, work, cfg.opts, label, recs, pristine[:cut], n, dataEnd, true)
				checkTornRecovery(t, work, cfg.opts, label+" (crash)", recs, crashImage(pristine[:cut], bounds, n, i), n, dataEnd, i%2 == 0)
			}
		})
	}
}

// A torn write can also leave zeros where the data should be (the file size
// was already extended, or pre-written). Zeros from anywhere in the last
// three frames on are treated exactly like a cut at that position: a torn
// tail above the durable mark, corruption below it.
func TestRecover_ZeroFilledTail(t *testing.T) {
	for _, cfg := range recoveryConfigs() {
		t.Run(cfg.name, func(t *testing.T) {
			t.Parallel()
			recs := tornTailRecords()
			pristine, bounds := writeSegment(t, t.TempDir(), cfg.opts, recs, false)
			n := len(recs)
			work := filepath.Join(t.TempDir(), "log")
			for cut := bounds[n-3]; cut <= bounds[n]; cut++ {
				damaged := bytes.Clone(pristine)
				clear(damaged[cut:])
				// Zeros over bytes that were zero already damage nothing:
				// the frames kept are those before the first changed byte.
				changed := cut
				for changed < int64(len(pristine)) && pristine[changed] == 0 {
					changed++
				}
				keep := framesBefore(bounds, changed)
				label := fmt.Sprintf("zeros from %d", cut)
				checkTornRecovery(t, work, cfg.opts, label, recs, crashImage(damaged, bounds, n-3, int(cut)), keep, bounds[keep], cut%5 == 2)
				if changed < bounds[n] {
					checkQuarantinedInPlace(t, work, cfg.opts, label+" below the mark", recs, damaged, keep, bounds[keep], cut%7 == 0)
				}
			}
		})
	}
}

// A flipped bit in the last frames of an open segment after a crash is
// indistinguishable from a torn write: recovery drops the damaged frame and
// everything after it, keeps everything before exactly, and never serves the
// damaged entry. Below the durable mark it is bit rot in acknowledged data:
// the segment is quarantined in place.
func TestRecover_BitFlipTail(t *testing.T) {
	for _, cfg := range recoveryConfigs() {
		t.Run(cfg.name, func(t *testing.T) {
			t.Parallel()
			recs := tornTailRecords()
			// A small last frame, so that every one of its bits is tried.
			recs[len(recs)-1] = Record{Timestamp: 1008, Headers: []Header{{"k", "v"}}, Value: []byte("tail!")}
			pristine, bounds := writeSegment(t, t.TempDir(), cfg.opts, recs, false)
			n := len(recs)
			work := filepath.Join(t.TempDir(), "log")
			try := func(frame int, bit int64) {
				damaged := flipBit(pristine, bounds[frame]*8+bit)
				label := fmt.Sprintf("frame %d bit %d", frame, bit)
				// The Append round is covered by the torn-tail tests; here
				// one bit in eight also appends.
				crashed := crashImage(damaged, bounds, frame, int(bit))
				checkTornRecovery(t, work, cfg.opts, label, recs, crashed, frame, bounds[frame], bit%8 == 3)
				if bit%3 == 0 { // every byte, at varied bits
					checkQuarantinedInPlace(t, work, cfg.opts, label+" below the mark", recs, damaged, frame, bounds[frame], bit%16 == 0)
				}
			}
			for bit := range (bounds[n] - bounds[n-1]) * 8 {
				try(n-1, bit)
			}
			for bit := int64(0); bit < (bounds[n-1]-bounds[n-2])*8; bit += 5 {
				try(n-2, bit)
			}
		})
	}
}

// A multi-record Append is all or nothing across a crash too: its records
// but the last carry frameFlagMore, and an Append whose frames did not all
// land whole is dropped entirely, however much of it is intact. Below the
// durable mark the same damage is corruption: quarantined in place, every
// intact frame before the damage (of the Append too) readable.
func TestRecover_TornMultiRecordAppend(t *testing.T) {
	for _, cfg := range recoveryConfigs() {
		t.Run(cfg.name, func(t *testing.T) {
			t.Parallel()
			recs := append(tornTailRecords()[:4],
				Record{Timestamp: 2001, Headers: []Header{{"Nats-Msg-Id", "g1"}, {"k", ""}}, Value: patterned(12, 5)},
				Record{Timestamp: 2002},
				Record{Timestamp: 2003, Headers: []Header{{"", "v"}}, Value: patterned(30, 6)})
			groups := []int{2, 1, 1, 3}
			pristine, bounds := writeSegmentGroups(t, t.TempDir(), cfg.opts, recs, groups, false)
			const g, n = 4, 7 // the last Append holds entries 4, 5 and 6
			gStart, dataEnd := bounds[g], bounds[n]
			checkPreallocLayout(t, cfg, pristine, dataEnd)
			for i := range n {
				fr, st, _ := decodeFrame(pristine[bounds[i]:])
				if more := i == 0 || i == 4 || i == 5; st != frameOK || fr.more() != more {
					t.Fatalf("frame %d: status %v, more flag %v; want more=%v", i, st, fr.more(), more)
				}
			}
			work := filepath.Join(t.TempDir(), "log")
			for cut := gStart; cut <= dataEnd; cut++ {
				label := fmt.Sprintf("cut at %d", cut)
				keep := g
				if cut == dataEnd {
					keep = n // the Append landed whole
				}
				crashed := crashImage(pristine[:cut], bounds, g, int(cut))
				checkTornRecovery(t, work, cfg.opts, label, recs, crashed, keep, bounds[keep], cut%6 == 1)
				if cut < dataEnd {
					k := framesBefore(bounds, cut)
					checkQuarantinedInPlace(t, work, cfg.opts, label+" below the mark", recs, pristine[:cut], k, bounds[k], cut%9 == 0)
				}
			}
			// Zeros over the end of the Append, and flipped bits in any of
			// its frames, drop all of it after a crash too.
			for cut := gStart; cut < dataEnd; cut += 4 {
				damaged := bytes.Clone(pristine)
				clear(damaged[cut:])
				if bytes.Equal(damaged, pristine) {
					continue
				}
				checkTornRecovery(t, work, cfg.opts, fmt.Sprintf("zeros from %d", cut), recs,
					crashImage(damaged, bounds, g, int(cut)), g, gStart, false)
			}
			for bit := int64(0); bit < (dataEnd-gStart)*8; bit += 11 {
				damaged := flipBit(pristine, gStart*8+bit)
				label := fmt.Sprintf("bit %d of the Append", bit)
				checkTornRecovery(t, work, cfg.opts, label, recs, crashImage(damaged, bounds, g, int(bit)), g, gStart, false)
				if bit%3 == 0 {
					k := framesBefore(bounds, gStart+bit/8)
					checkQuarantinedInPlace(t, work, cfg.opts, label+" below the mark", recs, damaged, k, bounds[k], false)
				}
			}
		})
	}
}

// writeSealedSegment writes a sealed segment of recs and returns its files:
// the .log, the .idx, and the frame boundaries (bounds[len(recs)] is where
// the seal frame starts).
func writeSealedSegment(t *testing.T, opts Options, recs []Record) (logFile, idxFile []byte, bounds []int64) {
	t.Helper()
	dir := t.TempDir()
	logFile, bounds = writeSegment(t, dir, opts, recs, true)
	if int64(len(logFile)) != bounds[len(recs)]+sealFrameSize {
		t.Fatalf("sealed file is %d bytes, want entries then one seal frame (%d)", len(logFile), bounds[len(recs)]+sealFrameSize)
	}
	return logFile, readFile(t, segIdxPath(dir, rTopic, 1)), bounds
}

func sealedFiles(logFile, idxFile []byte) map[string][]byte {
	m := map[string][]byte{segLogRel(1): logFile}
	if idxFile != nil {
		m[filepath.Join(topicsDir, topicDirName(rTopic), segmentFileName(1, idxExt))] = idxFile
	}
	return m
}

// A flipped byte inside an entry of a sealed segment is not a torn tail: the
// segment is adopted through its .idx without a scan and stays sealed with
// its full count. Reads return the entries before the damage, never the
// damaged one: a read starting at it fails with a *CorruptionError, a read
// running into it stops with the good prefix, and the segment is then
// reported corrupt. The file is never modified.
func TestRecover_CorruptSealedSegment(t *testing.T) {
	for _, cfg := range recoveryConfigs() {
		t.Run(cfg.name, func(t *testing.T) {
			t.Parallel()
			const n, bad = 40, 20
			recs := sealedRecords(n)
			logFile, idxFile, bounds := writeSealedSegment(t, cfg.opts, recs)
			if x, err := decodeIndexFile(idxFile); err != nil || x.points[len(x.points)-1].idx <= bad {
				t.Fatalf("the damage must lie before the last index point: %+v, %v", x, err)
			}
			dir := t.TempDir()
			damaged := bytes.Clone(logFile)
			damaged[bounds[bad+1]-3] ^= 0x40 // in entry 20's value
			resetDir(t, dir, sealedFiles(damaged, idxFile))
			l := openTest(t, dir, cfg.opts)
			infos := l.Segments(rTopic)
			if len(infos) != 1 || !infos[0].Sealed || infos[0].Count != n || infos[0].Corrupt || infos[0].Bytes != bounds[n]-dataStart {
				t.Fatalf("segments = %s, want sealed with %d entries (adopted via .idx)", infoString(infos), n)
			}
			before := topicFiles(t, dir)

			// A read from the start stops with the good prefix.
			es, err := l.Read(rTopic, 1, 0, ReadLimits{MaxEntries: 1 << 20, MaxBytes: 1 << 30})
			if err != nil {
				t.Fatalf("read from 0: %v", err)
			}
			checkEntries(t, "read from 0", es, recs[:bad])
			if !l.Segments(rTopic)[0].Corrupt {
				t.Fatal("segment not marked corrupt after a read hit the bad entry")
			}
			// A read starting at the damaged entry fails.
			_, err = l.Read(rTopic, 1, bad, ReadLimits{})
			var ce *CorruptionError
			if !errors.Is(err, ErrCorrupt) || !errors.As(err, &ce) || ce.Pos != bounds[bad] ||
				ce.Path != segLogPath(dir, rTopic, 1) {
				t.Fatalf("read at the bad entry: %v, want a *CorruptionError at %d", err, bounds[bad])
			}
			// From every index: only good entries, in order, never the bad one.
			for from := range uint64(n) {
				es, err := l.Read(rTopic, 1, from, ReadLimits{MaxEntries: 5})
				switch {
				case from < bad && (err != nil || len(es) != int(min(5, bad-from))):
					t.Fatalf("read from %d: %d entries, %v; want the %d before the damage", from, len(es), err, min(5, bad-from))
				case from == bad && !errors.Is(err, ErrCorrupt):
					t.Fatalf("read from the bad entry: %v", err)
				case from > bad && err != nil && !errors.Is(err, ErrCorrupt):
					t.Fatalf("read from %d: %v", from, err)
				}
				for i, e := range es {
					if e.Index != from+uint64(i) || e.Index == bad || !recordsMatch(e.Record, recs[e.Index]) {
						t.Fatalf("read from %d returned entry %d wrongly", from, e.Index)
					}
				}
			}
			// Across segments, ReadOffset returns the prefix too.
			checkEntries(t, "ReadOffset", readAll(t, l), recs[:bad])
			if after := topicFiles(t, dir); !sameFiles(after, before) {
				t.Fatal("reads of a corrupt sealed segment changed its files")
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			// Reopening adopts it again and changes nothing.
			l = openTest(t, dir, cfg.opts)
			if got := infoString(l.Segments(rTopic)); got != infoString(infos) {
				t.Fatalf("reopen: %s, want %s", got, infoString(infos))
			}
			if after := topicFiles(t, dir); !sameFiles(after, before) {
				t.Fatal("reopen changed the files")
			}
		})
	}
}

// The .idx file is a cache: when it is missing, damaged or disagrees with
// the .log, the segment is rescanned, stays sealed with the right count, and
// a valid .idx identical to the one written at seal time replaces it. The
// .log itself is not touched.
func TestRecover_SealedIndexRebuilt(t *testing.T) {
	cfg := recoveryConfigs()[0]
	const n = 40
	recs := sealedRecords(n)
	logFile, idxFile, bounds := writeSealedSegment(t, cfg.opts, recs)
	good, err := decodeIndexFile(idxFile)
	if err != nil || good.count != n || good.dataEnd != int64(len(logFile)) || len(good.points) < 3 {
		t.Fatalf("index written at seal: %+v, %v", good, err)
	}
	reencode := func(edit func(x *indexFile)) []byte {
		x := good
		x.points = slices.Clone(good.points)
		edit(&x)
		return x.encode()
	}
	cases := []struct {
		name string
		idx  []byte // nil: no .idx file
	}{
		{"missing", nil},
		{"empty", []byte{}},
		{"truncated to half", idxFile[:len(idxFile)/2]},
		{"last byte cut", idxFile[:len(idxFile)-1]},
		{"flipped magic", flipBit(idxFile, 3)},
		{"flipped count", flipBit(idxFile, 16*8)},
		{"flipped data end", flipBit(idxFile, 24*8+1)},
		{"flipped point", flipBit(idxFile, (idxFixed+16+9)*8)},
		{"flipped checksum", flipBit(idxFile, int64(len(idxFile)-2)*8)},
		{"data end disagrees", reencode(func(x *indexFile) { x.dataEnd++ })},
		{"data end short", reencode(func(x *indexFile) { x.dataEnd -= sealFrameSize })},
		{"count disagrees", reencode(func(x *indexFile) { x.count++ })},
		{"other segment", reencode(func(x *indexFile) { x.id = 2 })},
		{"extra bytes", append(bytes.Clone(idxFile), 0)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			resetDir(t, dir, sealedFiles(logFile, c.idx))
			l := openTest(t, dir, cfg.opts)
			infos := l.Segments(rTopic)
			if len(infos) != 1 || !infos[0].Sealed || infos[0].Count != n || infos[0].Bytes != bounds[n]-dataStart {
				t.Fatalf("segments = %s, want sealed with %d entries", infoString(infos), n)
			}
			checkEntries(t, c.name, readAll(t, l), recs)
			files := topicFiles(t, dir)
			if got := files[segLogRel(1)]; !bytes.Equal(got, logFile) {
				t.Fatal("rescanning a sealed segment changed its .log")
			}
			if got := files[filepath.Join(topicsDir, rTopic, segmentFileName(1, idxExt))]; !bytes.Equal(got, idxFile) {
				x, err := decodeIndexFile(got)
				t.Fatalf(".idx not rewritten as at seal time: %d bytes, decodes to %+v, %v", len(got), x, err)
			}
			if d := discardedOf(files); len(d) != 0 {
				t.Fatalf("discarded files %v", fileNames(d))
			}
		})
	}
}

// An .idx whose checksum is valid and whose count and data end agree with
// the .log, but whose points do not name the right frames, would make reads
// return entries under the wrong index. Adoption checks that the frames from
// the last point to the seal frame are exactly the remaining entries, so
// such an .idx is rejected, the segment rescanned and the .idx rewritten.
// Every read from every index then returns the right records. (Points
// between the first and the last are trusted, as doc.go says: only the
// engine writes an .idx, from its own index, under a CRC.)
func TestRecover_SealedIndexWrongPoints(t *testing.T) {
	cfg := recoveryConfigs()[0]
	const n = 40
	recs := sealedRecords(n)
	logFile, idxFile, bounds := writeSealedSegment(t, cfg.opts, recs)
	good, _ := decodeIndexFile(idxFile)
	last := len(good.points) - 1
	if last < 4 || good.points[last].idx+1 >= n {
		t.Fatalf("want several points, the last one before the last entry: %+v", good.points)
	}
	cases := []struct {
		name string
		k    int // the point edited
		edit func(p *indexEntry)
	}{
		{"last point names the next entry", last, func(p *indexEntry) { p.idx++ }},
		{"last point names the previous entry", last, func(p *indexEntry) { p.idx-- }},
		{"last point at the next frame", last, func(p *indexEntry) { p.pos = bounds[p.idx+1] }},
		{"last point inside its frame", last, func(p *indexEntry) { p.pos += 4 }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			x := good
			x.points = slices.Clone(good.points)
			c.edit(&x.points[c.k])
			bad := x.encode()
			if _, err := decodeIndexFile(bad); err != nil {
				t.Fatalf("test bug: the edited .idx does not decode: %v", err)
			}
			dir := t.TempDir()
			resetDir(t, dir, sealedFiles(logFile, bad))
			l := openTest(t, dir, cfg.opts)
			infos := l.Segments(rTopic)
			if len(infos) != 1 || !infos[0].Sealed || infos[0].Count != n || infos[0].Corrupt {
				t.Fatalf("segments = %s, want sealed with %d entries", infoString(infos), n)
			}
			idxOnDisk := readFile(t, segIdxPath(dir, rTopic, 1))
			for from := range uint64(n) {
				es, err := l.Read(rTopic, 1, from, ReadLimits{MaxEntries: 3})
				if err != nil || len(es) == 0 {
					t.Fatalf("Read(%d): %d entries, %v", from, len(es), err)
				}
				for i, e := range es {
					if e.Index == from+uint64(i) && recordsMatch(e.Record, recs[e.Index]) {
						continue
					}
					t.Fatalf("Read(%d) returned a wrong record as entry %d (read %d of %d)", from, e.Index, i, len(es))
				}
			}
			if !bytes.Equal(idxOnDisk, idxFile) {
				t.Fatalf("the wrong .idx was not replaced by the one written at seal time (%d bytes on disk)", len(idxOnDisk))
			}
			if got := readFile(t, segLogPath(dir, rTopic, 1)); !bytes.Equal(got, logFile) {
				t.Fatal("rescanning changed the .log")
			}
		})
	}
}

// sealedImage is a sealed segment 1 of rTopic at epoch as the engine writes
// it (the frames of writeSegment, then the seal frame), built directly so
// that the epoch can be chosen.
func sealedImage(recs []Record, epoch uint64) ([]byte, []int64) {
	h := segmentHeader{topic: rTopic, id: 1, epoch: epoch, base: rBase, created: 1}
	frames, bounds := writeSegmentBounds(recs)
	file := append(h.encode(), frames...)
	return appendSealFrame(file, uint64(len(recs)), epoch), bounds
}

// A sealed segment whose .idx is missing and which has a damaged entry in
// the middle must not be mistaken for an open segment with a torn tail: its
// entries after the damage were acknowledged and sealed (the seal frame is
// intact at the end of the file), so cutting them and reopening the segment
// for appends would lose them and reuse their offsets. It stays sealed with
// its full count and is reported corrupt; reads serve the entries before
// the damage and fail with a *CorruptionError from the damaged one on; it
// takes no append; the file is left untouched (no .discarded file, no .idx
// written). Zeros after the seal frame (an interrupted trim) change nothing.
func TestRecover_CorruptSealedSegmentNoIndex(t *testing.T) {
	cfg := recoveryConfigs()[0]
	const n = 40
	recs := sealedRecords(n)
	for _, c := range []struct {
		name  string
		epoch uint64
		zeros int
		bad   int // the damaged entry
	}{
		{"epoch 3", rEpoch, 0, 20},
		{"epoch 3, zeros after the seal", rEpoch, 5000, 20},
		// The seal frame ends with the epoch's high byte: here it is not zero.
		{"epoch 2^56+3", 1<<56 | rEpoch, 0, 20},
		{"epoch 2^56+3, zeros after the seal", 1<<56 | rEpoch, 5000, 20},
		{"epoch 2^56+3, bad entry 0", 1<<56 | rEpoch, 0, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			bad := c.bad
			logFile, bounds := sealedImage(recs, c.epoch)
			if c.epoch == rEpoch {
				// The image is what the engine writes.
				written, _, _ := writeSealedSegment(t, cfg.opts, recs)
				if !bytes.Equal(logFile[dataStart:len(logFile)-sealFrameSize], written[dataStart:len(written)-sealFrameSize]) {
					t.Fatal("sealedImage does not match the engine's layout")
				}
			}
			damaged := bytes.Clone(logFile)
			damaged[bounds[bad+1]-3] ^= 0x40
			damaged = append(damaged, make([]byte, c.zeros)...)
			dir := t.TempDir()
			files := sealedFiles(damaged, nil)
			resetDir(t, dir, files)
			ctx := context.Background()
			for round := range 2 {
				l := openTest(t, dir, cfg.opts)
				infos := l.Segments(rTopic)
				ok := len(infos) == 1 && infos[0].Sealed && infos[0].Count == n && infos[0].Corrupt &&
					infos[0].Failed == nil && infos[0].Bytes == bounds[n]-dataStart
				_, appendErr := l.Append(ctx, rTopic, 1, c.epoch, []Record{afterCrash})
				if !ok || len(l.Quarantined()) != 0 {
					t.Fatalf("open %d: segments %s, quarantined %s; want sealed, corrupt, %d entries",
						round, infoString(infos), quarantineString(l.Quarantined()), n)
				}
				if !errors.Is(appendErr, ErrSealed) {
					t.Fatalf("Append to the sealed segment: %v, want ErrSealed", appendErr)
				}
				if count, err := l.Seal(ctx, rTopic, 1, c.epoch); err != nil || count != n {
					t.Fatalf("Seal of the sealed segment = %d, %v; want %d", count, err, n)
				}
				if _, err := readNoPanic(l, rTopic, 1, 0, ReadLimits{}); errors.As(err, new(readPanic)) {
					t.Fatalf("Read(0) of a sealed segment whose first entry is damaged: %v", err)
				}
				es, err := l.ReadOffset(rTopic, rBase, ReadLimits{MaxEntries: 1 << 20, MaxBytes: 1 << 30})
				if bad == 0 {
					if len(es) != 0 || !errors.Is(err, ErrCorrupt) {
						t.Fatalf("ReadOffset: %d entries, %v; want ErrCorrupt", len(es), err)
					}
				} else if err != nil {
					t.Fatalf("ReadOffset: %v", err)
				}
				checkEntries(t, "ReadOffset", es, recs[:bad])
				for from := range uint64(n) {
					es, err := l.Read(rTopic, 1, from, ReadLimits{MaxEntries: 5})
					if from < uint64(bad) {
						if err != nil || len(es) != int(min(5, uint64(bad)-from)) {
							t.Fatalf("read from %d: %d entries, %v; want the %d before the damage", from, len(es), err, min(5, uint64(bad)-from))
						}
						for i, e := range es {
							if e.Index != from+uint64(i) || !recordsMatch(e.Record, recs[e.Index]) {
								t.Fatalf("read from %d returned entry %d wrongly", from, e.Index)
							}
						}
						continue
					}
					var ce *CorruptionError
					if len(es) != 0 || !errors.As(err, &ce) || ce.Pos != bounds[bad] {
						t.Fatalf("read from %d (at or after the damage): %d entries, %v; want a *CorruptionError at %d",
							from, len(es), err, bounds[bad])
					}
				}
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}
				if got := topicFiles(t, dir); !sameFiles(got, files) {
					t.Fatalf("open %d: the files changed: %v", round, fileNames(got))
				}
			}
		})
	}
}

// A damaged seal frame (with the .idx gone, or stale) leaves every entry
// intact: the segment recovers as open with its full count, the bad seal
// frame is kept aside and cut. The seal is then no longer durable, so its
// owner must seal the segment again; a new Seal succeeds with the same count
// and survives a reopen.
func TestRecover_SealFrameCorrupt(t *testing.T) {
	for _, cfg := range recoveryConfigs() {
		t.Run(cfg.name, func(t *testing.T) {
			t.Parallel()
			recs := tornTailRecords()
			n := len(recs)
			logFile, idxFile, bounds := writeSealedSegment(t, cfg.opts, recs)
			sealPos := bounds[n]
			work := filepath.Join(t.TempDir(), "log")
			ctx := context.Background()
			for bit := range int64(sealFrameSize * 8) {
				damaged := flipBit(logFile, sealPos*8+bit)
				label := fmt.Sprintf("seal frame bit %d", bit)
				var idx []byte
				if bit%16 == 5 {
					idx = idxFile // a stale .idx must not be trusted either
				}
				resetDir(t, work, sealedFiles(damaged, idx))
				l := openTest(t, work, cfg.opts)
				infos := l.Segments(rTopic)
				if len(infos) != 1 || infos[0].Sealed || infos[0].Count != uint64(n) || infos[0].Bytes != sealPos-dataStart ||
					infos[0].Failed != nil || infos[0].Corrupt {
					t.Fatalf("%s: segments = %s, want open with %d entries", label, infoString(infos), n)
				}
				checkEntries(t, label, readAll(t, l), recs)
				files := topicFiles(t, work)
				if got := files[segLogRel(1)]; !bytes.Equal(got, logFile[:sealPos]) {
					t.Fatalf("%s: file is %d bytes, want the %d before the seal frame", label, len(got), sealPos)
				}
				disc := discardedOf(files)
				if len(disc) != 1 {
					t.Fatalf("%s: discarded files %v, want one", label, fileNames(disc))
				}
				for _, b := range disc {
					if !bytes.Equal(b, damaged[sealPos:]) {
						t.Fatalf("%s: discarded %x, want the damaged seal frame", label, b)
					}
				}
				want := recs
				if bit%8 == 1 {
					// The owner may also append before sealing again.
					mustAppend(t, l, rTopic, 1, rEpoch, afterCrash)
					want = append(slices.Clone(recs), afterCrash)
				}
				if c, err := l.Seal(ctx, rTopic, 1, rEpoch); err != nil || c != uint64(len(want)) {
					t.Fatalf("%s: Seal = %d, %v; want %d", label, c, err, len(want))
				}
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}
				l = openTest(t, work, cfg.opts)
				infos = l.Segments(rTopic)
				if len(infos) != 1 || !infos[0].Sealed || infos[0].Count != uint64(len(want)) {
					t.Fatalf("%s: after the new seal and a reopen: %s", label, infoString(infos))
				}
				checkEntries(t, label+" (resealed)", readAll(t, l), want)
				x, err := readIndexFile(segIdxPath(work, rTopic, 1))
				if err != nil || x.count != uint64(len(want)) {
					t.Fatalf("%s: .idx after the new seal: %+v, %v", label, x, err)
				}
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// Segment headers: a file that never got a whole valid header (creation
// interrupted before any entry could be written) is removed; a bad header
// in front of data, or a header that names another segment or topic, is
// corruption: the file is quarantined (listed, not served) and left
// byte-for-byte untouched, and the rest of the log is served.
func TestRecover_Header(t *testing.T) {
	opts := recoveryConfigs()[1].opts
	logRel := func(id SegmentID) string {
		return filepath.Join(topicsDir, topicDirName(rTopic), segmentFileName(id, logExt))
	}
	valid := (&segmentHeader{topic: rTopic, id: 1, epoch: rEpoch, base: rBase, created: 1}).encode()

	t.Run("interrupted creation", func(t *testing.T) {
		for _, c := range []struct {
			name string
			file []byte
		}{
			{"empty", nil},
			{"zeros", make([]byte, dataStart)},
			{"garbage", patterned(dataStart, 9)},
			{"partial header", valid[:100]},
			{"short by one", valid[:dataStart-1]},
			{"flipped header, no data", flipBit(valid, 17*8)},
			{"short zeros", make([]byte, 10)},
		} {
			dir := t.TempDir()
			resetDir(t, dir, map[string][]byte{logRel(1): c.file})
			l := openTest(t, dir, opts)
			if s, q := l.Segments(rTopic), l.Quarantined(); len(s) != 0 || len(q) != 0 {
				t.Fatalf("%s: segments %s, quarantined %s; want the file removed", c.name, infoString(s), quarantineString(q))
			}
			if _, err := os.Stat(filepath.Join(dir, logRel(1))); !os.IsNotExist(err) {
				t.Fatalf("%s: incomplete segment file not removed: %v", c.name, err)
			}
			l.Close()
		}
		// A whole valid header without data is an empty open segment.
		dir := t.TempDir()
		resetDir(t, dir, map[string][]byte{logRel(1): valid})
		l := openTest(t, dir, opts)
		if s := l.Segments(rTopic); len(s) != 1 || s[0].Count != 0 || s[0].Sealed || s[0].Epoch != rEpoch || s[0].Base != rBase {
			t.Fatalf("header-only segment: %s", infoString(s))
		}
		if res := mustAppend(t, l, rTopic, 1, rEpoch, afterCrash); res.FirstOffset != rBase {
			t.Fatalf("append to header-only segment: %+v", res)
		}
	})

	// A log with segment 1 (three entries) and segment 2 (one entry).
	base := t.TempDir()
	l := openTest(t, base, opts)
	mustCreate(t, l, rTopic, 1, rEpoch, rBase)
	mustAppend(t, l, rTopic, 1, rEpoch, rec("a"), rec("b"), rec("c"))
	mustCreate(t, l, rTopic, 2, rEpoch, rBase+3)
	mustAppend(t, l, rTopic, 2, rEpoch, rec("d"))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	pristine := topicFiles(t, base)
	seg1 := pristine[logRel(1)]

	quarantine := func(t *testing.T, name string, damaged []byte) {
		t.Helper()
		files := maps.Clone(pristine)
		files[logRel(1)] = damaged
		dir := t.TempDir()
		resetDir(t, dir, files)
		for round := range 2 { // and again: quarantine is stable
			l := openTest(t, dir, opts)
			q := l.Quarantined()
			if len(q) != 1 || q[0].Path != segLogPath(dir, rTopic, 1) || !errors.Is(q[0].Err, ErrCorrupt) {
				t.Fatalf("%s (open %d): quarantined %s, want segment 1", name, round, quarantineString(q))
			}
			if s := l.Segments(rTopic); len(s) != 1 || s[0].ID != 2 || s[0].Count != 1 {
				t.Fatalf("%s (open %d): segments %s, want only segment 2", name, round, infoString(s))
			}
			if _, err := l.Read(rTopic, 1, 0, ReadLimits{}); !errors.Is(err, ErrSegmentNotFound) {
				t.Fatalf("%s: read of a quarantined segment: %v", name, err)
			}
			if es, err := l.Read(rTopic, 2, 0, ReadLimits{}); err != nil || fmt.Sprint(values(es)) != "[d]" {
				t.Fatalf("%s: read of segment 2: %q, %v", name, values(es), err)
			}
			if _, err := l.Append(context.Background(), rTopic, 1, rEpoch, []Record{afterCrash}); !errors.Is(err, ErrSegmentNotFound) {
				t.Fatalf("%s: append to a quarantined segment: %v", name, err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if got := topicFiles(t, dir); !sameFiles(got, files) {
				t.Fatalf("%s: files changed: %v", name, fileNames(got))
			}
		}
	}
	// Bits covered by the header checksum: magic, version, topic length,
	// id, epoch, base, creation time, the checksum itself, the topic.
	for _, bit := range []int64{0, 8*8 + 1, 10 * 8, 16 * 8, 24*8 + 5, 32*8 + 2, 40*8 + 7, 56 * 8, 64*8 + 1} {
		t.Run(fmt.Sprintf("header bit %d", bit), func(t *testing.T) { quarantine(t, "flipped", flipBit(seg1, bit)) })
	}
	t.Run("header names another segment", func(t *testing.T) {
		h := (&segmentHeader{topic: rTopic, id: 2, epoch: rEpoch, base: rBase, created: 1}).encode()
		quarantine(t, "id 2 in file 1", append(h, seg1[dataStart:]...))
	})
	t.Run("header names another topic", func(t *testing.T) {
		h := (&segmentHeader{topic: "u", id: 1, epoch: rEpoch, base: rBase, created: 1}).encode()
		quarantine(t, "topic u in directory t", append(h, seg1[dataStart:]...))
	})
}

// copyTopicFiles returns a deep copy of files.
func copyTopicFiles(files map[string][]byte) map[string][]byte {
	out := make(map[string][]byte, len(files))
	for k, v := range files {
		out[k] = bytes.Clone(v)
	}
	return out
}

// After every kind of damage, the first Open settles the files and its
// Close may mark a recovered open segment durable; a second Open and Close
// then find exactly the same log: same segments, same quarantine, not a
// byte changed, no new .discarded file. The damage hits files closed
// cleanly (segment 2 marked durable to its end) and crash images (segment
// 2's mark gone). The cases about segment 2's pre-written zeros run on a
// log written with the default prealloc step, the others (to keep the
// race detector's per-byte cost of megabytes of zeros down) with 64 KiB.
func TestRecover_Idempotent(t *testing.T) {
	recs := tornTailRecords()
	// Segment 2: recs as writeSegment appends them, then a 3-record Append.
	recs2 := append(slices.Clone(recs), Record{Timestamp: 3001, Value: []byte("g1")}, Record{Timestamp: 3002},
		Record{Timestamp: 3003, Headers: []Header{{"g", "3"}}, Value: patterned(64, 9)})
	groups2 := append(defaultGroups(len(recs)), 3)
	p1 := segLogRel(1)
	i1 := filepath.Join(topicsDir, rTopic, segmentFileName(1, idxExt))
	p2 := segLogRel(2)
	frames2, b2 := encodeGroups(recs2, groups2)
	n2 := len(recs2)
	end2 := b2[n2]
	defaultOpts := Options{Backend: BackendPwrite, IndexIntervalBytes: 256} // default PreallocBytes
	smallOpts := defaultOpts
	smallOpts.PreallocBytes = 64 << 10
	// build writes the log: segment 1 sealed, segment 2 open, and closes it.
	build := func(opts Options) map[string][]byte {
		base := t.TempDir()
		l := openTest(t, base, opts)
		mustCreate(t, l, rTopic, 1, rEpoch, rBase)
		mustAppend(t, l, rTopic, 1, rEpoch, recs...)
		if _, err := l.Seal(context.Background(), rTopic, 1, rEpoch); err != nil {
			t.Fatal(err)
		}
		mustCreate(t, l, rTopic, 2, rEpoch, rBase+Offset(len(recs)))
		i := 0
		for _, g := range groups2 {
			mustAppend(t, l, rTopic, 2, rEpoch, recs2[i:i+g]...)
			i += g
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		pristine := topicFiles(t, base)
		step := cmp.Or(opts.PreallocBytes, DefaultPreallocBytes)
		if f := pristine[p2]; int64(len(f)) < end2+step/2 || !bytes.Equal(f[dataStart:end2], frames2) || !allZero(f[end2:]) {
			t.Fatalf("open segment is %d bytes, want the frames then %d pre-written zeros after %d", len(f), step, end2)
		}
		if !bytes.Equal(markSector(pristine[p2]), encodeMark(end2, uint64(n2))) {
			t.Fatalf("open segment closed cleanly: mark %x, want it to claim all %d entries", markSector(pristine[p2]), n2)
		}
		return pristine
	}
	pristineDefault, pristineSmall := build(defaultOpts), build(smallOpts)
	sealPos := int64(len(pristineSmall[p1])) - sealFrameSize
	crash := func(f map[string][]byte) { f[p2] = withoutMark(f[p2]) }

	cases := []struct {
		name   string
		damage func(f map[string][]byte)
		failed bool // segment 2 is quarantined in place
	}{
		{"none", func(f map[string][]byte) {}, false},
		{"crash, no damage", crash, false},
		{"small step: none", func(f map[string][]byte) {}, false},
		{"torn mid-frame", func(f map[string][]byte) { f[p2] = f[p2][:b2[n2-1]+5] }, true},
		{"crash, torn mid-frame", func(f map[string][]byte) { crash(f); f[p2] = f[p2][:b2[n2-1]+5] }, false},
		{"torn in zeros", func(f map[string][]byte) { f[p2] = f[p2][:end2+100] }, false},
		{"crash, torn in zeros", func(f map[string][]byte) { crash(f); f[p2] = f[p2][:end2+100] }, false},
		{"zero-filled tail", func(f map[string][]byte) { clear(f[p2][b2[n2-2]+3:]) }, true},
		{"crash, zero-filled tail", func(f map[string][]byte) { crash(f); clear(f[p2][b2[n2-2]+3:]) }, false},
		{"bit flip in last frame", func(f map[string][]byte) { f[p2][b2[n2-1]+9] ^= 4 }, true},
		{"crash, bit flip in last frame", func(f map[string][]byte) { crash(f); f[p2][b2[n2-1]+9] ^= 4 }, false},
		{"bit flip far from the tail", func(f map[string][]byte) { f[p2][b2[1]+9] ^= 4 }, true},
		{"crash, multi-record append torn", func(f map[string][]byte) { crash(f); f[p2] = f[p2][:b2[n2-1]+2] }, false},
		{"crash, mark before the multi-record append", func(f map[string][]byte) {
			f[p2] = withMark(f[p2][:b2[n2-2]], b2[n2-3], uint64(n2-3))
		}, false},
		{"garbage in pre-written zeros", func(f map[string][]byte) { f[p2][end2+5000] = 1 }, false},
		{"garbage after seal frame", func(f map[string][]byte) { f[p1] = append(f[p1], "junk"...) }, false},
		{"zeros after seal frame", func(f map[string][]byte) { f[p1] = append(f[p1], make([]byte, 8192)...) }, false},
		{"corrupt .idx", func(f map[string][]byte) { f[i1][20] ^= 1 }, false},
		{"missing .idx", func(f map[string][]byte) { delete(f, i1) }, false},
		{"seal frame flipped, no .idx", func(f map[string][]byte) { f[p1][sealPos+30] ^= 8; delete(f, i1) }, false},
		{"corrupt entry in sealed segment", func(f map[string][]byte) { f[p1][dataStart+100] ^= 1 }, false},
		{"corrupt entry in sealed segment, no .idx", func(f map[string][]byte) { f[p1][dataStart+100] ^= 1; delete(f, i1) }, false},
		{"corrupt header", func(f map[string][]byte) { f[p2][20] ^= 1 }, false},
		{"interrupted creation", func(f map[string][]byte) {
			f[filepath.Join(topicsDir, rTopic, segmentFileName(3, logExt))] = make([]byte, dataStart)
		}, false},
		{"leftover index tmp", func(f map[string][]byte) { f[i1+tmpExt] = []byte("partial") }, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			opts, pristine := smallOpts, pristineSmall
			if c.name == "none" || c.name == "crash, no damage" || strings.Contains(c.name, "zeros") && !strings.Contains(c.name, "seal") {
				opts, pristine = defaultOpts, pristineDefault
			}
			files := copyTopicFiles(pristine)
			c.damage(files)
			dir := t.TempDir()
			resetDir(t, dir, files)
			type state struct {
				segs, quarantined string
				failed            bool // segment 2 listed as failed
				files             map[string][]byte
			}
			snapshot := func() state {
				l := openTest(t, dir, opts)
				infos := l.Segments(rTopic)
				st := state{segs: infoString(infos), quarantined: quarantineString(l.Quarantined())}
				for _, s := range infos {
					st.failed = st.failed || s.ID == 2 && s.Failed != nil
				}
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}
				st.files = topicFiles(t, dir)
				return st
			}
			first := snapshot()
			second := snapshot()
			if first.failed != c.failed {
				t.Fatalf("segment 2 failed = %v, want %v: %s", first.failed, c.failed, first.segs)
			}
			if first.segs != second.segs || first.quarantined != second.quarantined {
				t.Fatalf("second Open differs:\n segments %s\n       vs %s\n quarantined %s\n          vs %s",
					first.segs, second.segs, first.quarantined, second.quarantined)
			}
			// The first cycle settled everything (and marked recovered open
			// segments durable): the second changes not a byte.
			if !sameFiles(first.files, second.files) {
				t.Fatalf("second Open and Close changed the files: %v → %v", fileNames(first.files), fileNames(second.files))
			}
			if c.failed && !sameFiles(first.files, files) {
				t.Fatalf("a segment quarantined in place had its files changed: %v → %v", fileNames(files), fileNames(first.files))
			}
			// Without damage, the first cycle changes nothing either, or
			// only marks the segment a crash left unmarked: the files are
			// then those of a clean Close.
			if (strings.HasSuffix(c.name, "none") || c.name == "crash, no damage") && !sameFiles(first.files, pristine) {
				t.Fatalf("opening an undamaged log left files %v differing from a clean Close's", fileNames(first.files))
			}
		})
	}
}

// Fuzzed segment contents behind a valid header.
const (
	fuzzTopic = "f"
	// A small epoch, as in practice: its seal frames end in zero bytes.
	fuzzEpoch = uint64(7)
	fuzzBase  = Offset(100)
)

// fuzzFrame is a frame found by walking a segment file from dataStart.
type fuzzFrame struct {
	pos int64
	fr  frame
}

// fuzzScan is what recovery's scan of a segment file finds (rule 3 of the
// recovery): the frames from dataStart up to the first bad or short frame,
// the end of the file, or a valid seal frame (its count is the frames
// before it, its epoch the header's, and the frame before it does not say
// that more frames of its Append follow).
type fuzzScan struct {
	frames  []fuzzFrame
	stop    int64 // where the scan stopped (after the seal frame, if sealed)
	sealed  bool
	bad     bool // stopped at an invalid frame or seal frame before the end of the file
	inGroup bool // the last frame carries frameFlagMore: its Append did not land whole
	group   int  // the first frame of the last Append
}

func scanFrames(file []byte) fuzzScan {
	sc := fuzzScan{stop: dataStart}
	for {
		pos := sc.stop
		fr, st, _ := decodeFrame(file[pos:])
		if st != frameOK {
			sc.bad = pos < int64(len(file))
			return sc
		}
		if fr.isSeal() {
			if count, epoch := fr.sealInfo(); count == uint64(len(sc.frames)) && epoch == fuzzEpoch && !sc.inGroup {
				sc.sealed, sc.stop = true, pos+fr.size
			} else {
				sc.bad = true
			}
			return sc
		}
		if !sc.inGroup {
			sc.group = len(sc.frames)
		}
		sc.inGroup = fr.more()
		sc.frames = append(sc.frames, fuzzFrame{pos, fr})
		sc.stop += fr.size
	}
}

// adoptable reports whether idx would be adopted for file without a scan:
// it decodes, names segment 1, its data end is the file size, the file ends
// with the matching seal frame, and the frames from its last point to the
// seal frame are exactly the entries after that point.
func adoptable(file, idx []byte) (indexFile, bool) {
	x, err := decodeIndexFile(idx)
	if idx == nil || err != nil || x.id != 1 || x.dataEnd != int64(len(file)) || len(file) < dataStart+sealFrameSize {
		return x, false
	}
	end := int64(len(file)) - sealFrameSize
	fr, st, _ := decodeFrame(file[end:])
	if st != frameOK || !fr.isSeal() {
		return x, false
	}
	if count, epoch := fr.sealInfo(); count != x.count || epoch != fuzzEpoch {
		return x, false
	}
	if len(x.points) == 0 {
		return x, x.count == 0 && end == dataStart
	}
	last := x.points[len(x.points)-1]
	n, pos := last.idx, last.pos
	for pos < end {
		fr, st, _ := decodeFrame(file[pos:end])
		if st != frameOK || fr.isSeal() {
			return x, false
		}
		n++
		pos += fr.size
	}
	return x, n == x.count && pos == end
}

// trailingSeal finds the seal frame of rule 3b: a valid seal frame for
// fuzzEpoch, whose count is at least the frames scanned, ending between the
// file's last non-zero byte (after stop) and a seal payload's length past it
// (its count and epoch may end in zero bytes), the first such end winning.
// It returns its count and position.
func trailingSeal(file []byte, stop int64, scanned int) (uint64, int64, bool) {
	nz := int64(len(file))
	for nz > stop && file[nz-1] == 0 {
		nz--
	}
	for end := nz; end <= min(nz+sealPayloadSize, int64(len(file))); end++ {
		if end-stop < sealFrameSize {
			continue
		}
		fr, st, _ := decodeFrame(file[end-sealFrameSize : end])
		if st != frameOK || !fr.isSeal() {
			continue
		}
		if count, epoch := fr.sealInfo(); epoch == fuzzEpoch && count >= uint64(scanned) {
			return count, end - sealFrameSize, true
		}
	}
	return 0, 0, false
}

type fuzzOutcome int

const (
	fuzzAdopted       fuzzOutcome = iota // sealed, adopted through its .idx (rule 4)
	fuzzSealed                           // sealed by the scan (3a)
	fuzzSealedCorrupt                    // sealed with a bad entry, the file untouched (3b)
	fuzzQuarantined                      // quarantined in place, the file untouched (3c)
	fuzzOpen                             // open, its torn tail settled (3d)
)

func (o fuzzOutcome) String() string {
	return [...]string{"adopted", "sealed", "sealed corrupt", "quarantined in place", "open"}[o]
}

// fuzzWant is what recovery must make of a fuzzed segment.
type fuzzWant struct {
	outcome   fuzzOutcome
	count     uint64      // SegmentInfo.Count
	end       int64       // where the entries end: SegmentInfo.Bytes + dataStart
	frames    []fuzzFrame // the intact frames reads walk from entry 0
	log       []byte      // the .log after recovery
	discarded []byte      // the bytes kept aside in a .discarded file (none if all zeros)
	newIdx    bool        // recovery writes an .idx (else it leaves any .idx as it was)
}

// fuzzRecovery applies the recovery rules (3a-3d and 4) to file and idx.
func fuzzRecovery(file, idx []byte) fuzzWant {
	if x, ok := adoptable(file, idx); ok {
		end := int64(len(file)) - sealFrameSize
		return fuzzWant{outcome: fuzzAdopted, count: x.count, end: end, frames: scanFrames(file[:end]).frames, log: file}
	}
	sc := scanFrames(file)
	switch {
	case sc.sealed:
		return fuzzWant{outcome: fuzzSealed, count: uint64(len(sc.frames)), end: sc.stop - sealFrameSize, frames: sc.frames,
			log: file[:sc.stop], discarded: file[sc.stop:], newIdx: true}
	case sc.bad:
		if count, sealPos, ok := trailingSeal(file, sc.stop, len(sc.frames)); ok {
			return fuzzWant{outcome: fuzzSealedCorrupt, count: count, end: sealPos, frames: sc.frames, log: file}
		}
	}
	durable := durableOf(file)
	groupPos := sc.stop
	if sc.group < len(sc.frames) {
		groupPos = sc.frames[sc.group].pos
	}
	if sc.stop < durable || sc.inGroup && groupPos < durable {
		return fuzzWant{outcome: fuzzQuarantined, count: uint64(len(sc.frames)), end: sc.stop, frames: sc.frames, log: file}
	}
	stop, n := sc.stop, len(sc.frames)
	if sc.inGroup {
		stop, n = groupPos, sc.group
	}
	w := fuzzWant{outcome: fuzzOpen, count: uint64(n), end: stop, frames: sc.frames[:n], log: file, discarded: file[stop:]}
	if !allZero(file[stop:]) {
		w.log = file[:stop]
	}
	return w
}

// fuzzMark writes into file's header block the durable mark that mode bits
// 2-3 ask for, with bits 4-7 as its parameter p (0-15):
//
//	0: no mark;
//	1: a mark after the first p intact frames (all of them if fewer), as a
//	   writer leaves it;
//	2: a mark at an arbitrary size, from below dataStart through the frames
//	   to past the end of the file;
//	3: a damaged mark claiming the whole file, which must be ignored.
func fuzzMark(file []byte, mode uint8) {
	p := int64(mode >> 4)
	switch mode >> 2 & 3 {
	case 1:
		sc := scanFrames(file)
		k := min(int(p), len(sc.frames))
		size := int64(dataStart)
		if k > 0 {
			size = sc.frames[k-1].pos + sc.frames[k-1].fr.size
		}
		copy(file[markPos:], encodeMark(size, uint64(k)))
	case 2:
		size := dataStart - 50 + (int64(len(file))-dataStart+100)*p/15
		copy(file[markPos:], encodeMark(size, uint64(p)))
	case 3:
		m := encodeMark(int64(len(file)), 0)
		m[p*(markSize-1)/15] ^= 1 << (p % 8)
		copy(file[markPos:], m)
	}
}

// fuzzMode builds a fuzz mode: the .idx bits (see FuzzRecoverSegment) and
// a durable mark of kind with parameter p (see fuzzMark).
func fuzzMode(idx, kind, p uint8) uint8 { return idx | kind<<2 | p<<4 }

// FuzzRecoverSegment: whatever follows a valid segment header, Open
// recovers without panicking or failing, exactly by the recovery rules
// (fuzzRecovery); it never returns an entry that is not the intact frame at
// its position, never cuts below the durable mark, is idempotent from its
// first Close on, and leaves a healthy open segment able to append. mode
// bit 0 also writes the fuzz bytes as the .idx file; bit 1 writes a
// well-formed .idx matching the file's final seal frame (so that the
// segment may be adopted without a scan and only reads verify it); bits 2-7
// choose the durable mark (fuzzMark).
func FuzzRecoverSegment(f *testing.F) {
	recs := tornTailRecords()
	n := len(recs)
	frames, b := writeSegmentBounds(recs)
	at := func(pos int64) int64 { return pos - dataStart } // file position → position in frames
	sealed := appendSealFrame(bytes.Clone(frames), uint64(n), fuzzEpoch)
	f.Add(frames, uint8(0))
	f.Add(frames, fuzzMode(0, 1, 15))                 // closed cleanly
	f.Add(frames[:len(frames)-40], uint8(0))          // torn tail, no mark
	f.Add(frames[:len(frames)-40], fuzzMode(0, 1, 6)) // the mark right at the torn frame
	f.Add(frames[:len(frames)-40], fuzzMode(0, 2, 15))
	f.Add(frames[:len(frames)-40], fuzzMode(0, 2, 7))
	f.Add(frames[:at(b[1])+10], fuzzMode(0, 1, 0)) // the first Append (two records) torn in its second
	f.Add(frames[:at(b[1])], uint8(0))             // ... or ending with its first
	f.Add(frames[:at(b[1])], fuzzMode(0, 2, 15))
	f.Add(append(bytes.Clone(frames), make([]byte, 3000)...), uint8(0))
	f.Add(append(bytes.Clone(frames), make([]byte, 3000)...), fuzzMode(0, 1, 15))
	f.Add(append(bytes.Clone(frames), make([]byte, 3000)...), fuzzMode(0, 3, 5))
	f.Add(sealed, uint8(0))
	f.Add(sealed, uint8(2))
	f.Add(sealed, uint8(1))
	f.Add(sealed, fuzzMode(2, 1, 3))
	f.Add(append(bytes.Clone(sealed), "junk after the seal"...), uint8(0))
	f.Add(append(bytes.Clone(sealed), make([]byte, 100)...), fuzzMode(0, 2, 15))
	f.Add(appendSealFrame(bytes.Clone(frames), 3, fuzzEpoch), uint8(2)) // wrong count
	f.Add(appendSealFrame(bytes.Clone(frames), 3, fuzzEpoch), uint8(0))
	f.Add(appendSealFrame(bytes.Clone(frames), uint64(n+2), fuzzEpoch), uint8(0))          // a count too high: 3b
	f.Add(appendSealFrame(bytes.Clone(frames), uint64(n), fuzzEpoch+1), uint8(0))          // wrong epoch
	f.Add(appendSealFrame(bytes.Clone(frames), uint64(n), fuzzEpoch&0xffffffff), uint8(0)) // epoch ending in zeros
	mid := bytes.Clone(sealed)
	mid[4000] ^= 1
	f.Add(mid, uint8(2))
	f.Add(mid, uint8(0))
	f.Add(append(bytes.Clone(mid), make([]byte, 700)...), fuzzMode(0, 1, 15))
	f.Add(patterned(5000, 77), uint8(0))
	f.Add(make([]byte, 500), uint8(0))
	f.Add(make([]byte, 500), fuzzMode(0, 2, 9))
	f.Add([]byte{}, uint8(0))
	f.Add([]byte{}, fuzzMode(0, 2, 15))
	f.Add(sealed[len(frames):], uint8(2)) // a sealed empty segment... with the wrong count
	f.Add(appendSealFrame(nil, 0, fuzzEpoch), uint8(2))
	// A seal frame among the entries of a segment adopted through its .idx:
	// reads must not return it as an entry.
	inner := appendSealFrame(bytes.Clone(frames[:at(b[3])]), 3, fuzzEpoch)
	inner = append(inner, frames[at(b[3]):]...)
	f.Add(appendSealFrame(inner, uint64(n+1), fuzzEpoch), uint8(2))
	// A seal frame right after a frame that says more of its Append follow
	// is not a valid seal (3a); as the last frame of the file it is 3b.
	more := appendFrameFlags(bytes.Clone(frames), &recs[3], 0, frameFlagMore)
	f.Add(appendSealFrame(bytes.Clone(more), uint64(n+1), fuzzEpoch), uint8(0))
	f.Add(appendSealFrame(bytes.Clone(more), uint64(n+1), fuzzEpoch), uint8(2))
	// A 3-record Append at the end, torn in its middle record, with no
	// mark, the mark at its start (the batch in flight), the mark inside
	// it, or the mark at the end of the file.
	group := appendFrameFlags(bytes.Clone(frames), &recs[4], 0, frameFlagMore)
	group = appendFrameFlags(group, &recs[5], 0, frameFlagMore)
	group = appendFrameFlags(group, &recs[6], 0, 0)
	torn := group[:len(frames)+int(b[6]-b[4])-3]
	for _, mode := range []uint8{0, fuzzMode(0, 1, 7), fuzzMode(0, 1, 8), fuzzMode(0, 2, 15)} {
		f.Add(torn, mode)
	}
	f.Add(group, fuzzMode(0, 1, 8)) // whole, the mark inside it
	f.Add(appendSealFrame(bytes.Clone(group), uint64(n+3), fuzzEpoch), uint8(0))

	f.Fuzz(func(t *testing.T, body []byte, mode uint8) {
		if len(body) > 64<<10 {
			t.Skip("keep executions fast")
		}
		opts := Options{Backend: BackendPwrite, IndexIntervalBytes: 64, PreallocBytes: 4096}
		h := segmentHeader{topic: fuzzTopic, id: 1, epoch: fuzzEpoch, base: fuzzBase, created: 1}
		file := append(h.encode(), body...)
		fuzzMark(file, mode)
		dir := t.TempDir()
		logRel := filepath.Join(topicsDir, topicDirName(fuzzTopic), segmentFileName(1, logExt))
		idxRel := filepath.Join(topicsDir, topicDirName(fuzzTopic), segmentFileName(1, idxExt))
		files := map[string][]byte{logRel: file}
		var idx []byte
		switch {
		case mode&2 != 0:
			x := indexFile{id: 1, dataEnd: int64(len(file))}
			if len(file) >= dataStart+sealFrameSize {
				if fr, st, _ := decodeFrame(file[len(file)-sealFrameSize:]); st == frameOK && fr.isSeal() {
					x.count, _ = fr.sealInfo()
				}
			}
			if x.count > 0 {
				x.points = []indexEntry{{0, dataStart}}
			}
			idx = x.encode()
		case mode&1 != 0:
			idx = body
		}
		if idx != nil {
			files[idxRel] = idx
		}
		resetDir(t, dir, files)
		want := fuzzRecovery(file, idx)
		durable := durableOf(file)

		l, err := Open(dir, opts)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer l.Close()
		infos := l.Segments(fuzzTopic)
		if len(infos) != 1 || len(l.Quarantined()) != 0 {
			t.Fatalf("segments %s, quarantined %s", infoString(infos), quarantineString(l.Quarantined()))
		}
		info := infos[0]
		sealedWant := want.outcome <= fuzzSealedCorrupt
		corruptWant := want.outcome == fuzzSealedCorrupt || want.outcome == fuzzQuarantined
		if info.Count != want.count || info.Bytes != want.end-dataStart || info.Sealed != sealedWant || info.Corrupt != corruptWant ||
			(info.Failed != nil) != (want.outcome == fuzzQuarantined) {
			t.Fatalf("recovered as %s, want %s (count %d, %d bytes, mark at %d)",
				infoString(infos), want.outcome, want.count, want.end-dataStart, durable)
		}
		if want.outcome == fuzzQuarantined && (!errors.Is(info.Failed, ErrFailed) || !errors.Is(info.Failed, ErrCorrupt)) {
			t.Fatalf("quarantined in place with Failed = %v, want ErrFailed and ErrCorrupt", info.Failed)
		}
		got := topicFiles(t, dir)
		disc := discardedOf(got)
		if !bytes.Equal(got[logRel], want.log) {
			t.Fatalf("%s: .log is %d bytes after recovery, want %d (of %d)", want.outcome, len(got[logRel]), len(want.log), len(file))
		}
		checkDiscarded(t, disc, want.discarded)
		if want.newIdx {
			if xi, err := decodeIndexFile(got[idxRel]); err != nil || xi.count != want.count || xi.dataEnd != int64(len(want.log)) {
				t.Fatalf(".idx after rescan: %+v, %v", xi, err)
			}
		} else if !bytes.Equal(got[idxRel], idx) {
			t.Fatalf("%s: the .idx changed", want.outcome)
		}
		if _, ok := got[idxRel]; len(got) != 1+len(disc)+btoi(ok) {
			t.Fatalf("files after recovery: %v", fileNames(got))
		}
		// Nothing below the durable mark is ever cut. (Only rule 3a cuts
		// what follows a valid seal frame, which no mark reaches in a file
		// the engine wrote; it is kept in the .discarded file.)
		if lim := min(durable, int64(len(file))); want.outcome != fuzzSealed && lim > dataStart &&
			(int64(len(got[logRel])) < lim || !bytes.Equal(got[logRel][:lim], file[:lim])) {
			t.Fatalf("recovery cut or changed bytes below the durable mark at %d", durable)
		}
		readBack := fuzzReadAll(t, l, file, want)
		ctx := context.Background()
		switch want.outcome {
		case fuzzQuarantined:
			if _, err := l.Append(ctx, fuzzTopic, 1, fuzzEpoch, []Record{afterCrash}); !errors.Is(err, ErrFailed) {
				t.Fatalf("Append to a segment quarantined in place: %v", err)
			}
			if _, err := l.Seal(ctx, fuzzTopic, 1, fuzzEpoch); !errors.Is(err, ErrFailed) {
				t.Fatalf("Seal of a segment quarantined in place: %v", err)
			}
		case fuzzAdopted, fuzzSealed, fuzzSealedCorrupt:
			if _, err := l.Append(ctx, fuzzTopic, 1, fuzzEpoch, []Record{afterCrash}); !errors.Is(err, ErrSealed) {
				t.Fatalf("Append to a sealed segment: %v", err)
			}
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		// The first Close marks a recovered open segment durable to its
		// end, and changes nothing else.
		closed := topicFiles(t, dir)
		wantClosed := maps.Clone(got)
		if want.outcome == fuzzOpen && durable < want.end {
			wantClosed[logRel] = withMark(got[logRel], want.end, want.count)
		}
		if !sameFiles(closed, wantClosed) {
			t.Fatalf("Close after recovery (%s, mark at %d, end %d): files %v, mark %x; want %v, mark %x", want.outcome, durable,
				want.end, fileNames(closed), markSector(closed[logRel]), fileNames(wantClosed), markSector(wantClosed[logRel]))
		}

		// Idempotent: a second Open and Close change nothing.
		l2, err := Open(dir, opts)
		if err != nil {
			t.Fatalf("second Open: %v", err)
		}
		defer l2.Close()
		if s := infoString(l2.Segments(fuzzTopic)); s != infoString(infos) {
			t.Fatalf("second Open: %s, first %s", s, infoString(infos))
		}
		if again := topicFiles(t, dir); !sameFiles(again, closed) {
			t.Fatalf("second Open changed the files: %v → %v", fileNames(closed), fileNames(again))
		}
		if again := fuzzReadAll(t, l2, file, want); again != readBack {
			t.Fatalf("second Open reads %d entries, first %d", again, readBack)
		}
		if err := l2.Close(); err != nil {
			t.Fatal(err)
		}
		if again := topicFiles(t, dir); !sameFiles(again, closed) {
			t.Fatalf("second Close changed the files: %v → %v", fileNames(closed), fileNames(again))
		}
		if want.outcome != fuzzOpen {
			return
		}
		// A healthy open segment takes appends after its entries.
		l3, err := Open(dir, opts)
		if err != nil {
			t.Fatalf("third Open: %v", err)
		}
		defer l3.Close()
		res, err := l3.Append(ctx, fuzzTopic, 1, fuzzEpoch, []Record{afterCrash})
		if err != nil || res.FirstIndex != want.count {
			t.Fatalf("Append after recovery: %+v, %v", res, err)
		}
		es, err := l3.Read(fuzzTopic, 1, want.count, ReadLimits{})
		if err != nil || len(es) != 1 || !recordsMatch(es[0].Record, afterCrash) {
			t.Fatalf("read of the appended entry: %d entries, %v", len(es), err)
		}
	})
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func checkDiscarded(t *testing.T, disc map[string][]byte, tail []byte) {
	t.Helper()
	if allZero(tail) {
		if len(disc) != 0 {
			t.Fatalf("zero tail kept in %v", fileNames(disc))
		}
		return
	}
	if len(disc) != 1 {
		t.Fatalf("discarded files %v, want one", fileNames(disc))
	}
	for _, b := range disc {
		if !bytes.Equal(b, tail) {
			t.Fatalf("discarded %d bytes, want the %d cut", len(b), len(tail))
		}
	}
}

// fuzzReadAll reads the whole segment from entry 0 in small reads. Every
// returned entry must be the intact frame at its index (it re-encodes, with
// that frame's flags, to exactly the file's bytes there). Reads return the
// entries up to the count or the first damaged frame, whichever comes
// first, and a read starting at a damaged frame below the count fails with
// a corruption error. It returns how many entries were read.
func fuzzReadAll(t *testing.T, l *Log, file []byte, want fuzzWant) int {
	t.Helper()
	readable := min(want.count, uint64(len(want.frames)))
	next := uint64(0)
	for next < want.count {
		es, err := readNoPanic(l, fuzzTopic, 1, next, ReadLimits{MaxEntries: 7, MaxBytes: 2048})
		if err != nil {
			if !errors.Is(err, ErrCorrupt) || next != readable {
				t.Fatalf("read at %d of %d (%d intact): %v", next, want.count, readable, err)
			}
			break
		}
		if len(es) == 0 {
			t.Fatalf("read at %d of %d returned nothing", next, want.count)
		}
		for _, e := range es {
			if e.Index != next || e.Offset != fuzzBase+Offset(next) || e.Segment != 1 {
				t.Fatalf("entry %d/%d/%d returned at index %d", e.Segment, e.Index, e.Offset, next)
			}
			if e.Index >= uint64(len(want.frames)) {
				t.Fatalf("entry %d returned, but the file holds only %d intact frames", e.Index, len(want.frames))
			}
			w := want.frames[e.Index]
			enc := appendFrameFlags(nil, &e.Record, e.Timestamp, w.fr.flags)
			if !bytes.Equal(enc, file[w.pos:w.pos+w.fr.size]) {
				t.Fatalf("entry %d does not re-encode to the frame at %d", e.Index, w.pos)
			}
			next++
		}
	}
	if next != readable {
		t.Fatalf("read %d of %d entries, want the %d intact ones", next, want.count, readable)
	}
	return int(next)
}

// Damage far from the tail of an open segment is not a torn write but
// corruption of acknowledged, durable entries (bit rot): cutting there would
// lose the acknowledged entries after the damage and the next append would
// reuse their offsets. The durable mark tells them apart: a clean Close
// marks the whole file, and under FsyncAlways the mark never lags the synced
// data by much more than markEvery, so after a crash too, damage farther
// back is below it. Such a segment is quarantined in place: listed as
// failed and corrupt, its file untouched, the entries before the damage
// readable, no append or seal accepted, until DeleteSegment removes it (to
// be repaired from a replica); the segment id can then be created afresh.
func TestRecover_CorruptFrameFarFromTail(t *testing.T) {
	t.Run("closed", func(t *testing.T) {
		opts := Options{Backend: BackendPwrite, MaxEntryBytes: 1024, MaxBatchBytes: 1024, PreallocBytes: -1}
		recs := make([]Record, 40)
		for i := range recs {
			recs[i] = Record{Timestamp: int64(i + 1), Value: patterned(400, byte(i))}
		}
		pristine, bounds := writeSegment(t, t.TempDir(), opts, recs, false)
		if bounds[len(recs)]-bounds[2] < 10*opts.MaxBatchBytes {
			t.Fatal("the intact frames after the damage must span many batches")
		}
		dir := t.TempDir()
		damaged := flipBit(pristine, (bounds[1]+100)*8) // entry 1 of 40
		checkQuarantinedInPlace(t, dir, opts, "entry 1 of 40", recs, damaged, 1, bounds[1], true)

		// DeleteSegment removes it; the id can be created again.
		l := openTest(t, dir, opts)
		if err := l.DeleteSegment(rTopic, 1); err != nil {
			t.Fatalf("DeleteSegment of a segment quarantined in place: %v", err)
		}
		if s := l.Segments(rTopic); len(s) != 0 {
			t.Fatalf("after DeleteSegment: %s", infoString(s))
		}
		if files := topicFiles(t, dir); len(files) != 0 {
			t.Fatalf("files after DeleteSegment: %v", fileNames(files))
		}
		mustCreate(t, l, rTopic, 1, rEpoch, rBase)
		mustAppend(t, l, rTopic, 1, rEpoch, recs[0])
		checkEntries(t, "recreated", readAll(t, l), recs[:1])
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		l = openTest(t, dir, opts)
		if s := l.Segments(rTopic); len(s) != 1 || s[0].Count != 1 || s[0].Failed != nil {
			t.Fatalf("recreated segment after a reopen: %s", infoString(s))
		}
	})

	// A crash image of a segment written under FsyncAlways: more than
	// markEvery bytes were synced, the writer marked part of them, and the
	// process died without Close.
	t.Run("crashed", func(t *testing.T) {
		opts := Options{Backend: BackendPwrite, PreallocBytes: 64 << 10}
		recs := make([]Record, 0, 24)
		for i := range cap(recs) {
			recs = append(recs, Record{Timestamp: int64(i + 1), Value: patterned(60<<10, byte(i))})
		}
		dir := t.TempDir()
		l := openTest(t, dir, opts)
		mustCreate(t, l, rTopic, 1, rEpoch, rBase)
		groups := defaultGroups(len(recs))
		i := 0
		for _, g := range groups {
			mustAppend(t, l, rTopic, 1, rEpoch, recs[i:i+g]...)
			i += g
		}
		image := readFile(t, segLogPath(dir, rTopic, 1)) // every Append returned: all synced
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		_, bounds := encodeGroups(recs, groups)
		n := len(recs)
		durable := durableOf(image)
		k := framesBefore(bounds, durable)
		if durable <= bounds[2] || bounds[k] != durable || bounds[n]-durable >= markEvery+bounds[n]-bounds[n-1] {
			t.Fatalf("the writer's mark claims %d bytes of %d synced; want a frame boundary lagging by less than markEvery plus a batch",
				durable, bounds[n])
		}
		damaged := flipBit(image, (bounds[1]+100)*8)
		checkQuarantinedInPlace(t, filepath.Join(t.TempDir(), "log"), opts, "entry 1 after a crash", recs, damaged, 1, bounds[1], false)
		// Above the mark the same damage is a torn tail.
		damaged = flipBit(image, (bounds[n-1]+100)*8)
		checkTornRecovery(t, filepath.Join(t.TempDir(), "log"), opts, "last entry after a crash", recs, damaged, n-1, bounds[n-1], false)
	})
}
