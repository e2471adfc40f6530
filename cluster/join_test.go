package cluster

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func frame(body string) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(body)))
	return append(b, body...)
}

func TestJoin_ReadFrame(t *testing.T) {
	huge := binary.LittleEndian.AppendUint32(nil, joinMaxMessage+1)
	tests := []struct {
		name string
		in   []byte
		err  error // nil: decodes
	}{
		{"ok", frame(`{"node":{"id":2,"uuid":"u","raft_addr":"h:1"}}`), nil},
		{"empty", nil, io.EOF},
		{"short header", []byte{1, 0}, io.ErrUnexpectedEOF},
		{"short body", frame(`{"node":{}}`)[:8], io.ErrUnexpectedEOF},
		{"too large", huge, errFrameTooLarge},
		{"max u32", []byte{0xFF, 0xFF, 0xFF, 0xFF}, errFrameTooLarge},
		{"garbage", frame("\x00\x01garbage"), errors.New("decode")},
		{"wrong type", frame(`{"node":{"id":"two"}}`), errors.New("decode")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var q joinRequest
			err := readFrame(bytes.NewReader(tt.in), &q)
			switch {
			case tt.err == nil && err != nil:
				t.Fatalf("readFrame: %v", err)
			case tt.err != nil && err == nil:
				t.Fatalf("readFrame decoded %+v", q)
			case tt.err != nil && !errors.Is(err, tt.err) && !strings.Contains(err.Error(), tt.err.Error()):
				t.Fatalf("readFrame: %v, want %v", err, tt.err)
			}
		})
	}
	var buf bytes.Buffer
	if err := writeFrame(&buf, strings.Repeat("x", joinMaxMessage)); !errors.Is(err, errFrameTooLarge) {
		t.Fatalf("writeFrame of an oversized message: %v", err)
	}
}

// rawJoin sends raw bytes after the join byte and returns the decoded
// response, or an error if the node closed the connection without one.
func rawJoin(t *testing.T, addr string, payload []byte) (joinResponse, error) {
	t.Helper()
	c, err := dialKind(addr, time.Second, connJoin)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(payload); err != nil {
		return joinResponse{}, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var resp joinResponse
	err = readFrame(c, &resp)
	return resp, err
}

func TestJoin_BadRequestsGetAnErrorOrAClose(t *testing.T) {
	c := newTestCluster(t)
	n := c.start(1)
	addr := c.addrs[1]
	tests := []struct {
		name    string
		payload []byte
	}{
		{"oversized", binary.LittleEndian.AppendUint32(nil, 1<<30)},
		{"garbage json", frame("{not json")},
		{"no uuid", frame(`{"node":{"id":5,"raft_addr":"127.0.0.1:1"}}`)},
		{"no id", frame(`{"node":{"uuid":"u","raft_addr":"127.0.0.1:1"}}`)},
		{"bad raft addr", frame(`{"node":{"id":5,"uuid":"u","raft_addr":"nowhere"}}`)},
		{"null", frame(`null`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := rawJoin(t, addr, tt.payload)
			if err != nil {
				t.Fatalf("no response: %v", err)
			}
			if resp.Status != joinError || resp.Code != codeInvalid {
				t.Fatalf("response %+v", resp)
			}
		})
	}
	// A truncated request: the node gives up on it (a close or an error).
	if resp, err := rawJoin(t, addr, frame(`{"node":{"id":5}}`)[:9]); err == nil && resp.Status != joinError {
		t.Fatalf("truncated request answered %+v", resp)
	}

	// A dry run on the leader answers ok and changes nothing.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	before := n.Status().LastLogIndex
	resp, err := joinRPC(ctx, addr, &joinRequest{Node: NodeInfo{ID: 5, UUID: "u", RaftAddr: "127.0.0.1:1"}, DryRun: true})
	if err != nil || resp.Status != joinOK || len(resp.Members) != 1 {
		t.Fatalf("dry run: %+v %v", resp, err)
	}
	// A rejoin of a node that is not in the configuration is refused.
	resp, err = joinRPC(ctx, addr, &joinRequest{Node: NodeInfo{ID: 5, UUID: "u", RaftAddr: "127.0.0.1:1"}, Rejoin: true})
	if err != nil || resp.Code != codeNotMember {
		t.Fatalf("rejoin of a non-member: %+v %v", resp, err)
	}
	if _, ok := n.Metadata().Node(5); ok || len(n.Voters()) != 1 {
		t.Fatal("a refused request changed the cluster")
	}
	if after := n.Status().LastLogIndex; after > before+2 { // barriers only
		t.Fatalf("refused requests wrote %d entries", after-before)
	}
	c.createTopic("still-works", 1)
}

// fakeJoinServer answers every join connection with resp.
func fakeJoinServer(t *testing.T, resp func(addr string) joinResponse) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			var b [1]byte
			var req joinRequest
			if _, err := io.ReadFull(c, b[:]); err == nil && readFrame(c, &req) == nil {
				r := resp(addr)
				_ = writeFrame(c, &r)
			}
			c.Close()
		}
	}()
	return addr
}

func TestJoin_ClientRedirectsAndErrors(t *testing.T) {
	checkGoroutines(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := &joinRequest{Node: NodeInfo{ID: 2, UUID: "u", RaftAddr: "127.0.0.1:1"}}

	leader := fakeJoinServer(t, func(string) joinResponse {
		return joinResponse{Status: joinOK, Members: []NodeInfo{{ID: 1, RouteURL: "nats://a"}}, Index: 7}
	})
	follower := fakeJoinServer(t, func(string) joinResponse { return joinResponse{Status: joinRedirect, Leader: leader} })
	resp, at, err := joinVia(ctx, follower, req)
	if err != nil || at != leader || resp.Index != 7 || resp.Members[0].RouteURL != "nats://a" {
		t.Fatalf("redirect: %+v at %s: %v", resp, at, err)
	}

	loop := fakeJoinServer(t, func(self string) joinResponse { return joinResponse{Status: joinRedirect, Leader: self} })
	if _, _, err := joinVia(ctx, loop, req); err == nil {
		t.Fatal("a redirect to itself was followed")
	}
	var a, b string
	a = fakeJoinServer(t, func(string) joinResponse { return joinResponse{Status: joinRedirect, Leader: b} })
	b = fakeJoinServer(t, func(string) joinResponse { return joinResponse{Status: joinRedirect, Leader: a} })
	if _, _, err := joinVia(ctx, a, req); err == nil || !strings.Contains(err.Error(), "redirects") {
		t.Fatalf("a redirect cycle: %v", err)
	}
	replaced := fakeJoinServer(t, func(string) joinResponse {
		return joinResponse{Status: joinError, Code: codeNodeReplaced, Message: "recorded with another uuid"}
	})
	if _, _, err := joinVia(ctx, replaced, req); !errors.Is(err, ErrNodeReplaced) || !permanent(err) {
		t.Fatalf("node replaced: %v", err)
	}
	weird := fakeJoinServer(t, func(string) joinResponse { return joinResponse{Status: "weird"} })
	if _, _, err := joinVia(ctx, weird, req); err == nil {
		t.Fatal("an unknown status was accepted")
	}
}

func TestJoin_GivesUpWithTheLastFailure(t *testing.T) {
	c := newTestCluster(t)
	busy := fakeJoinServer(t, func(string) joinResponse {
		return joinResponse{Status: joinError, Code: codeNoLeader, Message: "no leader yet"}
	})
	cfg := c.config(1, busy)
	cfg.JoinTimeout = 700 * time.Millisecond
	start := time.Now()
	_, err := c.tryStart(cfg)
	if err == nil || !strings.Contains(err.Error(), "no leader yet") || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Start: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("gave up after %s", d)
	}
}

func FuzzJoinMessage(f *testing.F) {
	f.Add(frame(`{"node":{"id":2,"uuid":"u","raft_addr":"127.0.0.1:6000","route_url":"nats://h:6222"},"dry_run":true}`))
	f.Add(frame(`{"status":"redirect","leader":"h:1","members":[{"id":1}],"index":9}`))
	f.Add(frame(`{"status":"error","code":"node_replaced","message":"m"}`))
	f.Add(frame(`null`))
	f.Add([]byte{0xFF, 0xFF, 0xFF, 0x7F})
	f.Add([]byte{3, 0, 0, 0, '"', 'x', '"'})
	f.Fuzz(func(t *testing.T, data []byte) {
		var q joinRequest
		if err := readFrame(bytes.NewReader(data), &q); err == nil {
			_ = q.validate()
			roundTrip(t, &q, &joinRequest{})
		}
		var p joinResponse
		if err := readFrame(bytes.NewReader(data), &p); err == nil {
			_ = p.responseError()
			roundTrip(t, &p, &joinResponse{})
		}
	})
}

// roundTrip checks that a decoded message encodes to a frame that decodes
// and encodes to the same bytes.
func roundTrip[T any](t *testing.T, v *T, into *T) {
	var first, second bytes.Buffer
	if err := writeFrame(&first, v); err != nil {
		if errors.Is(err, errFrameTooLarge) { // JSON escaping can grow a message
			return
		}
		t.Fatalf("writeFrame: %v", err)
	}
	want := bytes.Clone(first.Bytes())
	if err := readFrame(&first, into); err != nil {
		t.Fatalf("readFrame of a written frame: %v", err)
	}
	if err := writeFrame(&second, into); err != nil {
		t.Fatalf("writeFrame again: %v", err)
	}
	if !bytes.Equal(second.Bytes(), want) {
		t.Fatalf("round trip: %q, want %q", second.Bytes(), want)
	}
}
