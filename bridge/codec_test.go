package bridge

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math"
	"reflect"
	"testing"
)

func sampleRequests() []*request {
	recs := []Record{
		{Timestamp: -1, Value: []byte("hello")},
		{Timestamp: math.MaxInt64, Headers: []Header{{"k", "v"}, {"", ""}, {"k", "second"}}},
	}
	return []*request{
		{op: opAppend, id: bytes.Repeat([]byte{0xab}, 16), append: AppendRequest{Topic: "orders", Segment: 3, Epoch: 17, Records: recs}},
		{op: opAppend, append: AppendRequest{}},
		{op: opRead, read: ReadRequest{Topic: "t", Segment: 1, Index: 2, MaxEntries: -5, MaxBytes: math.MaxInt64}},
		{op: opPropose, id: []byte{1}, propose: ProposeRequest{Command: []byte(`{"type":"x"}`)}},
		{op: opHeartbeat, heartbeat: Heartbeat{NodeID: 2, AppliedIndex: math.MaxUint64, SentUnixNano: math.MinInt64}},
	}
}

func sampleResponses() []*response {
	entries := []Entry{
		{Segment: 1, Index: 0, Offset: 10, Record: Record{Timestamp: 5, Value: []byte("a")}},
		{Segment: 1, Index: 1, Offset: 11, Record: Record{Headers: []Header{{"h", "1"}}}},
	}
	return []*response{
		{op: opAppend, append: AppendResponse{FirstIndex: 4, FirstOffset: 1 << 40}},
		{op: opRead, read: ReadResponse{Entries: entries, Count: 2, Sealed: true}},
		{op: opRead, read: ReadResponse{}},
		{op: opPropose, propose: ProposeResponse{Index: 99, Result: []byte("ok")}},
		{op: opHeartbeat, heartbeat: HeartbeatAck{LeaderID: 1, Term: 3}},
		errorResponse(opAppend, CodeNotLeader, "leader is 3"),
		errorResponse(0, CodeBadRequest, ""),
		errorResponse(opRead, Code(200), "a future code"),
	}
}

func TestCodec_RequestRoundTrip(t *testing.T) {
	for _, req := range sampleRequests() {
		data, err := encodeRequest(req)
		if err != nil {
			t.Fatalf("encode %v: %v", req.op, err)
		}
		got, err := decodeRequest(data)
		if err != nil {
			t.Fatalf("decode %v: %v", req.op, err)
		}
		if !reflect.DeepEqual(got, req) {
			t.Fatalf("%v: round trip\n got %+v\nwant %+v", req.op, got, req)
		}
		// Every truncation and every extra byte is rejected.
		for n := range len(data) {
			if _, err := decodeRequest(data[:n]); !errors.Is(err, ErrMalformed) {
				t.Fatalf("%v truncated to %d: %v", req.op, n, err)
			}
		}
		if _, err := decodeRequest(append(data, 0)); !errors.Is(err, ErrMalformed) {
			t.Fatalf("%v with a trailing byte: %v", req.op, err)
		}
	}
}

func TestCodec_ResponseRoundTrip(t *testing.T) {
	for _, resp := range sampleResponses() {
		data := encodeResponse(resp)
		got, err := decodeResponse(data)
		if err != nil {
			t.Fatalf("decode %v/%v: %v", resp.op, resp.code, err)
		}
		if !reflect.DeepEqual(got, resp) {
			t.Fatalf("round trip\n got %+v\nwant %+v", got, resp)
		}
		for n := range len(data) {
			if _, err := decodeResponse(data[:n]); !errors.Is(err, ErrMalformed) {
				t.Fatalf("%v truncated to %d: %v", resp.op, n, err)
			}
		}
	}
}

// The layout is the one documented in doc.go.
func TestCodec_Layout(t *testing.T) {
	req := &request{op: opHeartbeat, id: []byte{0xee}, heartbeat: Heartbeat{NodeID: 1, AppliedIndex: 2, SentUnixNano: 3}}
	data, err := encodeRequest(req)
	if err != nil {
		t.Fatal(err)
	}
	want := "01" + "04" + "01" + "ee" + "0100000000000000" + "0200000000000000" + "0300000000000000" + "00" // leaving: false
	if got := hex.EncodeToString(data); got != want {
		t.Fatalf("heartbeat request\n got %s\nwant %s", got, want)
	}
	resp := encodeResponse(errorResponse(opAppend, CodeNotLeader, "no"))
	if got, want := hex.EncodeToString(resp), "01"+"01"+"02"+"02000000"+"6e6f"; got != want {
		t.Fatalf("error response\n got %s\nwant %s", got, want)
	}
}

func TestCodec_Rejects(t *testing.T) {
	for name, data := range map[string]string{
		"empty":       "",
		"version":     "020400",
		"unknown op":  "010900",
		"huge count":  "010100" + "00000000" + "0000000000000000" + "0000000000000000" + "ffffffff",
		"huge string": "010300" + "ffffff7f",
		"id past end": "010410",
	} {
		b, _ := hex.DecodeString(data)
		if _, err := decodeRequest(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A read response whose sealed byte is not 0 or 1.
	data := encodeResponse(&response{op: opRead, read: ReadResponse{Sealed: true}})
	data[3+8] = 2
	if _, err := decodeResponse(data); !errors.Is(err, ErrMalformed) {
		t.Errorf("bool 2: %v", err)
	}
	// A successful response must name a known op.
	if _, err := decodeResponse([]byte{wireVersion, 0, 0}); !errors.Is(err, ErrMalformed) {
		t.Errorf("ok response with op 0: %v", err)
	}
}

func FuzzDecodeRequest(f *testing.F) {
	for _, req := range sampleRequests() {
		data, err := encodeRequest(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte{})
	f.Add([]byte{wireVersion, byte(opAppend), 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := decodeRequest(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		again, err := encodeRequest(req)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("not canonical:\n in %x\nout %x", data, again)
		}
		back, err := decodeRequest(again)
		if err != nil || !reflect.DeepEqual(back, req) {
			t.Fatalf("second round trip: %v", err)
		}
	})
}

func FuzzDecodeResponse(f *testing.F) {
	for _, resp := range sampleResponses() {
		f.Add(encodeResponse(resp))
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		resp, err := decodeResponse(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		again := encodeResponse(resp)
		if !bytes.Equal(again, data) {
			t.Fatalf("not canonical:\n in %x\nout %x", data, again)
		}
		back, err := decodeResponse(again)
		if err != nil || !reflect.DeepEqual(back, resp) {
			t.Fatalf("second round trip: %v", err)
		}
	})
}
