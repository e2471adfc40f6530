package storage

import (
	"bytes"
	"encoding/binary"
	"math"
	"strings"
	"testing"
	"time"
)

// Frame codec tests. The frame is the unit of integrity: every property the
// recovery and read paths promise ("no corrupt entry is ever returned", "a
// torn tail is recognised as such") rests on decodeFrame classifying bytes
// correctly, so it is tested exhaustively on small frames and fuzzed.

// headersMatch compares header lists, treating nil and empty as equal.
func headersMatch(a, b []Header) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// recordsMatch reports whether two records carry the same timestamp, headers
// and value (nil and empty values are equal).
func recordsMatch(a, b Record) bool {
	return a.Timestamp == b.Timestamp && headersMatch(a.Headers, b.Headers) && bytes.Equal(a.Value, b.Value)
}

// rawFrame builds a frame from its parts with a correct size and CRC, so that
// tests can reach the structural checks behind the checksum.
func rawFrame(ts int64, flags, nh uint16, body []byte) []byte {
	b := make([]byte, frameHeaderSize, frameHeaderSize+len(body))
	binary.LittleEndian.PutUint32(b[0:4], uint32(frameHeaderSize+len(body)))
	binary.LittleEndian.PutUint64(b[8:16], uint64(ts))
	binary.LittleEndian.PutUint16(b[16:18], flags)
	binary.LittleEndian.PutUint16(b[18:20], nh)
	b = append(b, body...)
	putFrameCRC(b)
	return b
}

// rawHeader encodes one header entry with explicit (possibly lying) lengths.
func rawHeader(klen uint16, vlen uint32, kv string) []byte {
	b := binary.LittleEndian.AppendUint16(nil, klen)
	b = binary.LittleEndian.AppendUint32(b, vlen)
	return append(b, kv...)
}

func patterned(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7+i/251)
	}
	return b
}

// smallFrames returns a few small encoded frames (entries and a seal frame)
// for the exhaustive truncation and bit-flip tests.
func smallFrames() []namedFrame {
	return []namedFrame{
		{"empty", appendFrame(nil, &Record{}, 1)},
		{"value", appendFrame(nil, &Record{Timestamp: 99, Value: []byte("hello, walrus")}, 0)},
		{"headers", appendFrame(nil, &Record{Timestamp: -5, Headers: []Header{{"k", "v"}, {"k", ""}, {"", "w"}, {"", ""}}, Value: []byte("x")}, 0)},
		{"seal", appendSealFrame(nil, 12345, 7)},
	}
}

type namedFrame struct {
	name string
	b    []byte
}

func TestFrame_RoundTrip(t *testing.T) {
	allBytes := make([]byte, 256)
	for i := range allBytes {
		allBytes[i] = byte(i)
	}
	maxHeaders := make([]Header, maxHeaderCount)
	maxHeaders[maxHeaderCount-1] = Header{"last", "one"}
	cases := []struct {
		name   string
		rec    Record
		ts     int64 // passed to appendFrame
		wantTS int64
	}{
		{"empty record", Record{}, 1, 1},
		{"empty non-nil value", Record{Value: []byte{}}, 5, 5},
		{"zero timestamp everywhere", Record{Value: []byte("v")}, 0, 0},
		{"record timestamp wins", Record{Timestamp: 42, Value: []byte("x")}, 99, 42},
		{"negative timestamp", Record{Timestamp: -1, Value: []byte("neg")}, 3, -1},
		{"extreme timestamp", Record{Timestamp: math.MinInt64}, 3, math.MinInt64},
		{"headers repeated and empty keys", Record{
			Headers: []Header{{"Nats-Msg-Id", "a"}, {"X", "1"}, {"X", "2"}, {"", ""}, {"", "v"}, {"k", ""}},
			Value:   []byte("payload"),
		}, 7, 7},
		{"headers without value", Record{Headers: []Header{{"only", "headers"}}}, 8, 8},
		{"binary", Record{Headers: []Header{{"\x00\xff", "\x00"}, {string(allBytes), string(allBytes)}}, Value: allBytes}, 9, 9},
		{"large value", Record{Value: patterned(1<<20+3, 1)}, 10, 10},
		{"longest header key", Record{Headers: []Header{{strings.Repeat("k", maxHeaderKey), strings.Repeat("v", 70000)}}, Value: []byte("z")}, 11, 11},
		{"most headers", Record{Headers: maxHeaders, Value: []byte("m")}, 12, 12},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := validateRecord(&c.rec); err != nil {
				t.Fatalf("validateRecord: %v", err)
			}
			prefix := []byte("prefix")
			out := appendFrame(append([]byte(nil), prefix...), &c.rec, c.ts)
			if !bytes.Equal(out[:len(prefix)], prefix) {
				t.Fatal("appendFrame modified the bytes before dst's end")
			}
			enc := out[len(prefix):]
			if int64(len(enc)) != frameSize(&c.rec) {
				t.Fatalf("encoded %d bytes, frameSize says %d", len(enc), frameSize(&c.rec))
			}
			if size, st := peekFrameSize(enc); st != frameOK || size != int64(len(enc)) {
				t.Fatalf("peekFrameSize = %d, %v", size, st)
			}
			// Frames are self-delimiting: trailing bytes do not matter.
			for _, buf := range [][]byte{enc, append(append([]byte(nil), enc...), "trailing garbage"...)} {
				fr, st, reason := decodeFrame(buf)
				if st != frameOK || reason != "" {
					t.Fatalf("decodeFrame = %v %q", st, reason)
				}
				if fr.size != int64(len(enc)) || fr.isSeal() || fr.flags != 0 {
					t.Fatalf("frame size %d flags %#x, want %d, 0", fr.size, fr.flags, len(enc))
				}
				want := c.rec
				want.Timestamp = c.wantTS
				if got := (Record{Timestamp: fr.ts, Headers: fr.headers, Value: fr.value}); !recordsMatch(got, want) {
					t.Fatalf("decoded record differs: ts %d (want %d), %d headers (want %d), %d value bytes (want %d)",
						got.Timestamp, want.Timestamp, len(got.Headers), len(want.Headers), len(got.Value), len(want.Value))
				}
			}
		})
	}
}

func TestFrame_SealRoundTrip(t *testing.T) {
	before := time.Now().UnixNano()
	for _, c := range []struct{ count, epoch uint64 }{{0, 0}, {1, 1}, {12345, 7}, {math.MaxUint64, math.MaxUint64}} {
		f := appendSealFrame([]byte("x"), c.count, c.epoch)[1:]
		if len(f) != sealFrameSize {
			t.Fatalf("seal frame is %d bytes, want %d", len(f), sealFrameSize)
		}
		fr, st, reason := decodeFrame(f)
		if st != frameOK {
			t.Fatalf("decode seal(%d,%d) = %v %q", c.count, c.epoch, st, reason)
		}
		if !fr.isSeal() || fr.size != sealFrameSize || len(fr.headers) != 0 || len(fr.value) != sealPayloadSize {
			t.Fatalf("seal frame decoded as %+v", fr)
		}
		if count, epoch := fr.sealInfo(); count != c.count || epoch != c.epoch {
			t.Fatalf("sealInfo = %d, %d; want %d, %d", count, epoch, c.count, c.epoch)
		}
		if fr.ts < before {
			t.Fatalf("seal timestamp %d is before the test started (%d)", fr.ts, before)
		}
	}
}

func TestFrame_SizeMatchesEncoding(t *testing.T) {
	for n := range 40 {
		r := Record{Value: patterned(n*13, byte(n))}
		for h := range n % 5 {
			r.Headers = append(r.Headers, Header{strings.Repeat("k", h*n%17), strings.Repeat("v", n%11)})
		}
		if got, want := int64(len(appendFrame(nil, &r, 1))), frameSize(&r); got != want {
			t.Fatalf("record %d: encoded %d bytes, frameSize %d", n, got, want)
		}
	}
}

func TestFrame_ValidateRecordLimits(t *testing.T) {
	cases := []struct {
		name string
		rec  Record
		ok   bool
	}{
		{"empty", Record{}, true},
		{"max headers", Record{Headers: make([]Header, maxHeaderCount)}, true},
		{"too many headers", Record{Headers: make([]Header, maxHeaderCount+1)}, false},
		{"max key", Record{Headers: []Header{{Key: strings.Repeat("k", maxHeaderKey)}}}, true},
		{"key too long", Record{Headers: []Header{{Key: strings.Repeat("k", maxHeaderKey+1)}}}, false},
		{"key too long after good ones", Record{Headers: []Header{{"a", "b"}, {Key: strings.Repeat("k", maxHeaderKey+1)}}}, false},
		{"long header value", Record{Headers: []Header{{"k", strings.Repeat("v", 1<<17)}}}, true},
	}
	for _, c := range cases {
		if err := validateRecord(&c.rec); (err == nil) != c.ok {
			t.Errorf("%s: validateRecord = %v, want ok=%v", c.name, err, c.ok)
		}
	}
}

// Every proper prefix of a valid frame is frameShort, never frameBad (which
// would make recovery treat a torn write as corruption) and never frameOK.
func TestFrame_DecodeTruncated(t *testing.T) {
	for _, nf := range smallFrames() {
		name, f := nf.name, nf.b
		for n := range len(f) {
			if _, st, reason := decodeFrame(f[:n]); st != frameShort {
				t.Fatalf("%s cut to %d of %d bytes: %v %q, want frameShort", name, n, len(f), st, reason)
			}
		}
	}
}

// A single flipped bit is never accepted: CRC32C detects every 1-bit error in
// the bytes it covers; a flip in the size field either makes the size
// impossible, points past the buffer (short), or moves the checksummed range.
func TestFrame_DecodeBitFlip(t *testing.T) {
	for _, nf := range smallFrames() {
		name, f := nf.name, nf.b
		// Decode the damaged frame alone and followed by more bytes, so
		// that a size flip can also land inside the buffer.
		for _, pad := range []int{0, 300} {
			for bit := range len(f) * 8 {
				buf := append(append([]byte(nil), f...), make([]byte, pad)...)
				buf[bit/8] ^= 1 << (bit % 8)
				_, st, reason := decodeFrame(buf)
				want := frameBad
				if bit < 32 {
					size := int64(binary.LittleEndian.Uint32(buf[0:4]))
					if size >= frameHeaderSize && size <= maxFrameSize && size > int64(len(buf)) {
						want = frameShort
					}
				}
				if st != want {
					t.Fatalf("%s (pad %d) bit %d flipped: %v %q, want %v", name, pad, bit, st, reason, want)
				}
			}
		}
	}
}

func TestFrame_DecodeInvalidSize(t *testing.T) {
	for _, size := range []uint32{0, 1, frameHeaderSize - 1, maxFrameSize + 1, math.MaxUint32} {
		b := make([]byte, 64)
		binary.LittleEndian.PutUint32(b[0:4], size)
		putFrameCRC(b) // a checksum cannot make an impossible size acceptable
		if _, st, reason := decodeFrame(b); st != frameBad || reason != "invalid frame size" {
			t.Errorf("size %d: %v %q, want frameBad", size, st, reason)
		}
		if _, st := peekFrameSize(b); st != frameBad {
			t.Errorf("peekFrameSize(size %d) = %v, want frameBad", size, st)
		}
	}
	// The bounds themselves are valid.
	if _, st, reason := decodeFrame(rawFrame(1, 0, 0, nil)); st != frameOK {
		t.Errorf("minimal frame: %v %q", st, reason)
	}
	b := make([]byte, 64)
	binary.LittleEndian.PutUint32(b[0:4], maxFrameSize)
	if _, st, _ := decodeFrame(b); st != frameShort {
		t.Errorf("a 1 GiB frame in 64 bytes: %v, want frameShort", st)
	}
}

func TestFrame_DecodeUnknownFlags(t *testing.T) {
	for bit := 0; bit < 16; bit++ {
		if 1<<bit&frameKnownFlag != 0 {
			continue
		}
		for _, base := range []uint16{0, frameFlagSeal} {
			flags := base | 1<<bit
			body := []byte("value")
			if base == frameFlagSeal {
				body = make([]byte, sealPayloadSize)
			}
			_, st, reason := decodeFrame(rawFrame(1, flags, 0, body))
			if st != frameBad || !strings.Contains(reason, "flags") {
				t.Errorf("flags %#04x: %v %q, want frameBad for unknown flags", flags, st, reason)
			}
		}
	}
}

// The "more" flag marks every record of a multi-record Append but the last;
// it round-trips, and a seal frame may not carry it.
func TestFrame_MoreFlag(t *testing.T) {
	b := appendFrameFlags(nil, &Record{Value: []byte("first of two")}, 1, frameFlagMore)
	fr, st, reason := decodeFrame(b)
	if st != frameOK || !fr.more() || string(fr.value) != "first of two" {
		t.Fatalf("more frame: %v %q more=%v", st, reason, fr.more())
	}
	if fr, _, _ := decodeFrame(appendFrame(nil, &Record{}, 1)); fr.more() {
		t.Fatal("plain frame has the more flag")
	}
	if _, st, reason := decodeFrame(rawFrame(1, frameFlagSeal|frameFlagMore, 0, make([]byte, sealPayloadSize))); st != frameBad {
		t.Fatalf("seal frame with more flag: %v %q, want frameBad", st, reason)
	}
}

// Structurally invalid frames with a correct checksum are frameBad: the
// checksum is not what stands between a bad encoder and a panic or a
// misparsed entry.
func TestFrame_DecodeStructural(t *testing.T) {
	h := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	cases := []struct {
		name  string
		flags uint16
		nh    uint16
		body  []byte
	}{
		{"header count without headers", 0, 1, nil},
		{"header entry cut in its lengths", 0, 1, []byte{1, 0, 0}},
		{"key overruns frame", 0, 1, rawHeader(10, 0, "short")},
		{"value overruns frame", 0, 1, rawHeader(1, 10, "kv")},
		{"value length 4 GiB", 0, 1, rawHeader(0, math.MaxUint32, "abc")},
		{"key and value lengths max", 0, 1, rawHeader(math.MaxUint16, math.MaxUint32, "abc")},
		{"second header missing", 0, 2, rawHeader(1, 1, "kv")},
		{"second header overruns", 0, 2, h(rawHeader(1, 1, "kv"), rawHeader(3, 0, "ab"))},
		{"max header count", 0, math.MaxUint16, rawHeader(0, 0, "")},
		{"seal with headers", frameFlagSeal, 1, h(rawHeader(0, 0, ""), make([]byte, 10))},
		{"seal payload short", frameFlagSeal, 0, make([]byte, sealPayloadSize-1)},
		{"seal payload long", frameFlagSeal, 0, make([]byte, sealPayloadSize+1)},
		{"seal payload empty", frameFlagSeal, 0, nil},
	}
	for _, c := range cases {
		f := rawFrame(1, c.flags, c.nh, c.body)
		_, st, reason := decodeFrame(f)
		if st != frameBad || reason == "" || reason == "checksum mismatch" || reason == "invalid frame size" {
			t.Errorf("%s: %v %q, want frameBad from the structural check", c.name, st, reason)
		}
	}
	// The same constructions with consistent lengths decode.
	f := rawFrame(1, 0, 2, h(rawHeader(1, 1, "kv"), rawHeader(2, 0, "ab"), []byte("val")))
	fr, st, reason := decodeFrame(f)
	if st != frameOK || !headersMatch(fr.headers, []Header{{"k", "v"}, {"ab", ""}}) || string(fr.value) != "val" {
		t.Fatalf("consistent raw frame: %v %q %+v", st, reason, fr)
	}
}

// The scanner must find exactly the frames a sequential decodeFrame walk
// finds, however its reads are split (small refill chunks, EOF mid-frame,
// a reused window).
func TestFrame_ScannerMatchesSequentialDecode(t *testing.T) {
	var data []byte
	for i := range 30 {
		r := Record{Timestamp: int64(i), Value: patterned(i*37%500, byte(i))}
		if i%3 == 0 {
			r.Headers = []Header{{"i", strings.Repeat("h", i)}}
		}
		data = appendFrame(data, &r, 1)
	}
	data = appendSealFrame(data, 30, 1)
	for _, tail := range [][]byte{nil, []byte{7, 0, 0}, data[:27], make([]byte, 100)} {
		buf := append(append([]byte(nil), data...), tail...)
		for _, chunk := range []int{1, 19, 20, 21, 64, 1000, minScanChunk} {
			for _, reuse := range []bool{false, true} {
				checkScanner(t, buf, chunk, reuse)
			}
		}
	}
}

// checkScanner compares a frameScanner walk over b with decodeFrame.
func checkScanner(t testing.TB, b []byte, chunk int, reuse bool) {
	t.Helper()
	rd := bytes.NewReader(b)
	sc := frameScanner{read: rd.ReadAt, pos: 0, limit: int64(len(b)), chunk: chunk, reuse: reuse}
	pos := int64(0)
	for i := 0; ; i++ {
		want, wst, _ := decodeFrame(b[pos:])
		got, gpos, gst, _, err := sc.next()
		if err != nil {
			t.Fatalf("chunk %d reuse %v frame %d: scanner I/O error %v", chunk, reuse, i, err)
		}
		if gpos != pos || gst != wst {
			t.Fatalf("chunk %d reuse %v frame %d at %d: scanner says %v at %d, decodeFrame %v", chunk, reuse, i, pos, gst, gpos, wst)
		}
		if wst != frameOK {
			if sc.pos != pos {
				t.Fatalf("scanner advanced past a %v frame", wst)
			}
			return
		}
		if got.size != want.size || got.ts != want.ts || got.flags != want.flags ||
			!headersMatch(got.headers, want.headers) || !bytes.Equal(got.value, want.value) {
			t.Fatalf("chunk %d reuse %v frame %d at %d decoded differently", chunk, reuse, i, pos)
		}
		pos += want.size
	}
}

// FuzzDecodeFrame: arbitrary bytes never panic the decoder, its verdict is
// consistent with the bytes, and whatever it accepts as an entry re-encodes
// to exactly the bytes it was decoded from (so a frame that decodes cannot
// carry data its checksum did not cover, and the encoder and decoder agree
// on the format). It also checks the frame scanner against decodeFrame.
func FuzzDecodeFrame(f *testing.F) {
	for _, nf := range smallFrames() {
		f.Add(nf.b)
	}
	two := appendFrame(nil, &Record{Value: []byte("first")}, 1)
	two = appendFrame(two, &Record{Headers: []Header{{"X", "1"}, {"X", "2"}}, Value: []byte("second")}, 2)
	f.Add(two)
	f.Add(appendFrame(nil, &Record{Timestamp: 5, Headers: []Header{{"", ""}}}, 0))
	f.Add(appendFrame(nil, &Record{Value: patterned(3000, 3)}, 9))
	f.Add(two[:len(two)-3])
	f.Add(rawFrame(1, 0, 1, rawHeader(10, 0, "short")))
	f.Add(rawFrame(1, 2, 0, nil))
	f.Add([]byte{})
	f.Add(make([]byte, 20))
	f.Add([]byte("\xff\xff\xff\xff garbage that is not a frame at all"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, st, reason := decodeFrame(b)
		psize, pst := peekFrameSize(b)
		switch st {
		case frameOK:
			if reason != "" || fr.size < frameHeaderSize || fr.size > int64(len(b)) || pst != frameOK || psize != fr.size {
				t.Fatalf("frameOK with reason %q, size %d of %d bytes, peek %d %v", reason, fr.size, len(b), psize, pst)
			}
			enc := b[:fr.size]
			if fr.isSeal() {
				count, epoch := fr.sealInfo()
				if fr.size != sealFrameSize || len(fr.headers) != 0 ||
					binary.LittleEndian.Uint64(enc[20:28]) != count || binary.LittleEndian.Uint64(enc[28:36]) != epoch {
					t.Fatalf("seal frame accepted with size %d, %d headers", fr.size, len(fr.headers))
				}
				break
			}
			r := Record{Timestamp: fr.ts, Headers: fr.headers, Value: fr.value}
			if err := validateRecord(&r); err != nil {
				t.Fatalf("decoded record fails validation: %v", err)
			}
			if re := appendFrameFlags(nil, &r, fr.ts, fr.flags); !bytes.Equal(re, enc) {
				t.Fatalf("re-encoding the decoded record gives %x, decoded from %x", re, enc)
			}
			// The decoded strings and value do not depend on bytes past
			// the frame, and a cut frame is short, not bad.
			for _, n := range []int64{fr.size - 1, fr.size / 2, frameHeaderSize - 1} {
				if n >= 0 && n < fr.size {
					if _, st, _ := decodeFrame(enc[:n]); st != frameShort {
						t.Fatalf("frame cut to %d of %d bytes: %v", n, fr.size, st)
					}
				}
			}
		case frameShort:
			if len(b) >= frameHeaderSize && (pst != frameOK || psize <= int64(len(b))) {
				t.Fatalf("frameShort for %d bytes holding a frame of size %d (%v)", len(b), psize, pst)
			}
		case frameBad:
			if reason == "" {
				t.Fatal("frameBad without a reason")
			}
		default:
			t.Fatalf("unknown status %v", st)
		}
		if len(b) > 0 {
			checkScanner(t, b, 1+int(b[0])%64, b[len(b)-1]&1 == 0)
		}
	})
}
