package protocol_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"runtime"
	"testing"

	"github.com/walrus-edge/walrus/broker/protocol"
)

// chunkReader returns at most sizes[i%len(sizes)] bytes per Read, to split
// frames at every possible point (as nats-server's FuzzParser does).
type chunkReader struct {
	data  []byte
	sizes []int
	i     int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := 1
	if len(r.sizes) > 0 {
		n = max(1, r.sizes[r.i%len(r.sizes)])
		r.i++
	}
	n = min(n, len(p), len(r.data))
	copy(p, r.data[:n])
	r.data = r.data[n:]
	return n, nil
}

func header(n uint32) []byte { return binary.LittleEndian.AppendUint32(nil, n) }

func frame(t testing.TB, body []byte) []byte {
	t.Helper()
	b, err := protocol.AppendFrame(nil, body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFrameReader_Boundaries(t *testing.T) {
	const small = 16
	tests := []struct {
		name  string
		max   int
		input []byte
		want  []byte // body, when err is nil
		err   error
	}{
		{"empty stream", 0, nil, nil, io.EOF},
		{"1 byte of length", 0, []byte{1}, nil, io.EOF},
		{"3 bytes of length", 0, []byte{1, 0, 0}, nil, io.EOF},
		{"zero length", 0, header(0), nil, protocol.ErrEmptyFrame},
		{"length 1", 0, append(header(1), 'x'), []byte("x"), nil},
		{"length 1 no body", 0, header(1), nil, io.ErrUnexpectedEOF},
		{"short body", 0, append(header(5), "abc"...), nil, io.ErrUnexpectedEOF},
		{"default max", 0, frame(t, bytes.Repeat([]byte("a"), protocol.DefaultMaxFrameSize)), bytes.Repeat([]byte("a"), protocol.DefaultMaxFrameSize), nil},
		{"default max+1", 0, append(header(protocol.DefaultMaxFrameSize+1), 'a'), nil, protocol.ErrFrameTooLarge},
		{"max u32", 0, header(math.MaxUint32), nil, protocol.ErrFrameTooLarge},
		{"small max-1", small, frame(t, bytes.Repeat([]byte("b"), small-1)), bytes.Repeat([]byte("b"), small-1), nil},
		{"small max", small, frame(t, bytes.Repeat([]byte("b"), small)), bytes.Repeat([]byte("b"), small), nil},
		{"small max+1", small, frame(t, bytes.Repeat([]byte("b"), small+1)), nil, protocol.ErrFrameTooLarge},
	}
	for _, tt := range tests {
		for _, sizes := range [][]int{nil, {1}, {2, 3}, {7}, {4096}} {
			fr := protocol.NewFrameReader(&chunkReader{data: tt.input, sizes: sizes}, tt.max)
			got, err := fr.Next()
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Errorf("%s (reads %v): Next = %d bytes, %v; want %v", tt.name, sizes, len(got), err, tt.err)
				}
				if got != nil {
					t.Errorf("%s: body returned with error", tt.name)
				}
				continue
			}
			if err != nil || !bytes.Equal(got, tt.want) {
				t.Errorf("%s (reads %v): Next = %q, %v", tt.name, sizes, shortBytes(got), err)
				continue
			}
			if cap(got) != len(got) {
				t.Errorf("%s: allocated %d bytes for a %d-byte frame", tt.name, cap(got), len(got))
			}
			if _, err := fr.Next(); err != io.EOF {
				t.Errorf("%s: after last frame Next = %v, want io.EOF", tt.name, err)
			}
		}
	}
}

func TestFrameReader_Stream(t *testing.T) {
	var stream []byte
	stream = append(stream, frame(t, []byte("REGISTER logs"))...)
	stream = append(stream, header(0)...) // answered, then the loop goes on
	stream = append(stream, frame(t, []byte("PUT logs hello world"))...)
	stream = append(stream, frame(t, []byte("GET logs"))...)
	want := []string{"REGISTER logs", "<empty>", "PUT logs hello world", "GET logs"}

	for k := 1; k <= 9; k++ {
		fr := protocol.NewFrameReader(&chunkReader{data: stream, sizes: []int{k, 1, k + 2}}, 0)
		var got []string
		for {
			b, err := fr.Next()
			if errors.Is(err, protocol.ErrEmptyFrame) {
				got = append(got, "<empty>")
				continue
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("k=%d: %v", k, err)
			}
			got = append(got, string(b))
		}
		if len(got) != len(want) {
			t.Fatalf("k=%d: got %q, want %q", k, got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("k=%d: frame %d = %q, want %q", k, i, got[i], want[i])
			}
		}
	}
}

// A header announcing a huge reply must not make the reader allocate the
// whole announced size before the bytes arrive.
func TestFrameReader_NoAllocBeforeData(t *testing.T) {
	const announced = 60 << 20
	input := append(header(announced), bytes.Repeat([]byte("z"), 100)...)
	fr := protocol.NewFrameReader(bytes.NewReader(input), protocol.DefaultMaxReplySize)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := fr.Next()
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("Next = %v, want io.ErrUnexpectedEOF", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 4<<20 {
		t.Fatalf("allocated %d bytes for 100 bytes of data", got)
	}
}

func TestFrameReader_LargeFrameGrows(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789"), 300_001) // ~3 MB, several growth steps
	fr := protocol.NewFrameReader(&chunkReader{data: frame(t, body), sizes: []int{65536, 3}}, protocol.DefaultMaxReplySize)
	got, err := fr.Next()
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("Next = %d bytes, %v", len(got), err)
	}
	if cap(got) != len(body) {
		t.Errorf("cap = %d, want %d (never more than N)", cap(got), len(body))
	}
}

func TestFrameReader_ReadError(t *testing.T) {
	boom := errors.New("boom")
	fr := protocol.NewFrameReader(io.MultiReader(bytes.NewReader([]byte{1, 0}), errReader{boom}), 0)
	if _, err := fr.Next(); !errors.Is(err, boom) {
		t.Fatalf("Next = %v, want wrapped boom", err)
	}
	fr = protocol.NewFrameReader(io.MultiReader(bytes.NewReader(append(header(4), 'a')), errReader{boom}), 0)
	if _, err := fr.Next(); !errors.Is(err, boom) {
		t.Fatalf("Next = %v, want wrapped boom", err)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// countingWriter records each Write call.
type countingWriter struct {
	writes [][]byte
	n      int // bytes to accept per call; 0 = all
	err    error
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.writes = append(w.writes, append([]byte(nil), p...))
	if w.err != nil {
		return 0, w.err
	}
	if w.n > 0 && w.n < len(p) {
		return w.n, nil
	}
	return len(p), nil
}

func TestWriteFrame(t *testing.T) {
	var w countingWriter
	if err := protocol.WriteFrame(&w, []byte("PUT logs hi")); err != nil {
		t.Fatal(err)
	}
	want := []byte{11, 0, 0, 0, 'P', 'U', 'T', ' ', 'l', 'o', 'g', 's', ' ', 'h', 'i'}
	if len(w.writes) != 1 || !bytes.Equal(w.writes[0], want) {
		t.Fatalf("writes = %q, want one write %q", w.writes, want)
	}

	boom := errors.New("boom")
	if err := protocol.WriteFrame(&countingWriter{err: boom}, []byte("x")); !errors.Is(err, boom) {
		t.Fatalf("WriteFrame = %v, want wrapped boom", err)
	}
	if err := protocol.WriteFrame(&countingWriter{n: 2}, []byte("xyz")); !errors.Is(err, io.ErrShortWrite) {
		t.Fatalf("WriteFrame = %v, want io.ErrShortWrite", err)
	}
}

func TestFrameReader_MaxSize(t *testing.T) {
	if got := protocol.NewFrameReader(bytes.NewReader(nil), 0).MaxSize(); got != protocol.DefaultMaxFrameSize {
		t.Errorf("default max = %d", got)
	}
	if got := protocol.NewFrameReader(bytes.NewReader(nil), 10).MaxSize(); got != 10 {
		t.Errorf("max = %d", got)
	}
}

func shortBytes(b []byte) []byte {
	if len(b) > 32 {
		return b[:32]
	}
	return b
}

func TestFrameReader_Buffered(t *testing.T) {
	input := append(frame(t, []byte("a")), frame(t, []byte("bc"))...)
	fr := protocol.NewFrameReader(bytes.NewReader(input), 0)
	if _, err := fr.Next(); err != nil {
		t.Fatal(err)
	}
	if got := fr.Buffered(); got != 6 {
		t.Fatalf("Buffered = %d, want 6 (the second frame)", got)
	}
}
