package protocol_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/walrus-edge/walrus/broker/protocol"
)

// FuzzFrameReader feeds arbitrary bytes, split across reads at fuzzed
// points, through a FrameReader. It must never panic, never return a frame
// larger than the maximum, and the frames it returns, re-encoded, must be
// a prefix of the input; whatever stops it must match the bytes left.
func FuzzFrameReader(f *testing.F) {
	seed := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	f.Add(seed(frame(f, []byte("PUT logs hello"))), []byte{1}, uint16(0))
	f.Add(seed(header(0), frame(f, []byte("GET t")), header(0)), []byte{3, 1, 2}, uint16(8))
	f.Add(seed(frame(f, []byte("0123456789")), frame(f, []byte("x"))), []byte{5}, uint16(9))
	f.Add(seed(header(protocol.DefaultMaxFrameSize+1), []byte("abcd")), []byte{}, uint16(0))
	f.Add(seed(header(3), []byte("ab")), []byte{2}, uint16(0))
	f.Add([]byte{1, 0}, []byte{1}, uint16(4))

	f.Fuzz(func(t *testing.T, data, splits []byte, maxSize uint16) {
		sizes := make([]int, len(splits))
		for i, s := range splits {
			sizes[i] = int(s)%17 + 1
		}
		limit := int(maxSize) // 0 selects the default
		fr := protocol.NewFrameReader(&chunkReader{data: data, sizes: sizes}, limit)
		limit = fr.MaxSize()

		var re []byte
		for {
			body, err := fr.Next()
			if err == nil {
				if len(body) == 0 || len(body) > limit {
					t.Fatalf("frame of %d bytes with max %d", len(body), limit)
				}
				if re, err = protocol.AppendFrame(re, body); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if !bytes.HasPrefix(data, re) {
				t.Fatalf("re-encoded frames are not a prefix of the input")
			}
			rest := data[len(re):]
			switch {
			case errors.Is(err, protocol.ErrEmptyFrame):
				if len(rest) < 4 || binary.LittleEndian.Uint32(rest) != 0 {
					t.Fatalf("ErrEmptyFrame without a zero length")
				}
				re = append(re, 0, 0, 0, 0)
				continue
			case errors.Is(err, protocol.ErrFrameTooLarge):
				if len(rest) < 4 || uint64(binary.LittleEndian.Uint32(rest)) <= uint64(limit) {
					t.Fatalf("ErrFrameTooLarge for a length within max: %v", err)
				}
			case err == io.EOF:
				if len(rest) >= 4 {
					t.Fatalf("io.EOF with %d bytes left", len(rest))
				}
			case errors.Is(err, io.ErrUnexpectedEOF):
				if len(rest) < 4 || uint64(len(rest)-4) >= uint64(binary.LittleEndian.Uint32(rest)) {
					t.Fatalf("ErrUnexpectedEOF with a complete frame left")
				}
			default:
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
	})
}

// FuzzParse checks that Parse never panics, that every error carries its
// reply text, and that a parsed command validates and survives
// Encode → Parse unchanged.
func FuzzParse(f *testing.F) {
	for _, tc := range parseCases {
		f.Add([]byte(tc.body))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		c, err := protocol.Parse(body)
		if err != nil {
			var ce *protocol.CommandError
			if !errors.As(err, &ce) || ce.Msg == "" || protocol.ErrorMessage(err) != ce.Msg {
				t.Fatalf("Parse(%q) error %v lacks a reply message", body, err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse(%q) = %s, which does not validate: %v", body, describe(c), err)
		}
		again, err := protocol.Parse(c.Encode())
		if err != nil {
			t.Fatalf("Parse(Encode(%s)) = %v", describe(c), err)
		}
		if !sameCommand(c, again) {
			t.Fatalf("Parse(%q) = %s; re-parsed %s", body, describe(c), describe(again))
		}
	})
}
