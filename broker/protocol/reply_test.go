package protocol_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/walrus-edge/walrus/broker/protocol"
)

func TestParseReply(t *testing.T) {
	tests := []struct {
		body    string
		kind    protocol.ReplyKind
		payload string
		message string
	}{
		{"OK", protocol.ReplyOK, "", ""},
		{"OK hello world", protocol.ReplyOKPayload, "hello world", ""},
		{"OK ", protocol.ReplyOKPayload, "", ""},
		{"OK  lead", protocol.ReplyOKPayload, " lead", ""},
		{"OK PONG", protocol.ReplyOKPayload, "PONG", ""},
		{"EMPTY", protocol.ReplyEmpty, "", ""},
		{"ERR unknown topic logs", protocol.ReplyErr, "", "unknown topic logs"},
		{"ERR", protocol.ReplyErr, "", ""},
		{"ERR ", protocol.ReplyErr, "", ""},
		{`{"current_segment":1}`, protocol.ReplyRaw, `{"current_segment":1}`, ""},
		{"{\n  \"state\": \"Leader\"\n}", protocol.ReplyRaw, "{\n  \"state\": \"Leader\"\n}", ""},
		{"OKAY", protocol.ReplyRaw, "OKAY", ""},
		{"EMPTY ", protocol.ReplyRaw, "EMPTY ", ""},
		{"ERRX", protocol.ReplyRaw, "ERRX", ""},
		{"ok", protocol.ReplyRaw, "ok", ""},
	}
	for _, tt := range tests {
		r, err := protocol.ParseReply([]byte(tt.body))
		if err != nil {
			t.Fatalf("ParseReply(%q): %v", tt.body, err)
		}
		if r.Kind != tt.kind || string(r.Payload) != tt.payload || r.Message != tt.message {
			t.Errorf("ParseReply(%q) = %v %q %q, want %v %q %q", tt.body, r.Kind, r.Payload, r.Message, tt.kind, tt.payload, tt.message)
		}
		if tt.body != "ERR" && r.String() != tt.body {
			t.Errorf("Encode(ParseReply(%q)) = %q", tt.body, r.String())
		}
	}
	if _, err := protocol.ParseReply(nil); !errors.Is(err, protocol.ErrMalformedReply) {
		t.Errorf("ParseReply(empty) = %v, want ErrMalformedReply", err)
	}
}

func TestReplyConstructors(t *testing.T) {
	tests := []struct {
		r    protocol.Reply
		want string
	}{
		{protocol.OKReply(), "OK"},
		{protocol.PayloadReply([]byte("x y")), "OK x y"},
		{protocol.PayloadReply(nil), "OK "},
		{protocol.EmptyReply(), "EMPTY"},
		{protocol.ErrorReply("unknown topic t"), "ERR unknown topic t"},
		{protocol.ReplyForError(protocol.ErrEmptyFrame), "ERR invalid frame length"},
		{protocol.RawReply([]byte(`{"a":1}`)), `{"a":1}`},
		{protocol.FetchReply(7, []byte("msg 1")), "OK 7 msg 1"},
		{protocol.FetchReply(1, nil), "OK 1 "},
		{protocol.PongReply(), "OK PONG"},
		{protocol.Reply{}, "ERR invalid reply"},
	}
	for _, tt := range tests {
		if got := tt.r.String(); got != tt.want {
			t.Errorf("%v.Encode() = %q, want %q", tt.r.Kind, got, tt.want)
		}
	}
	var se *protocol.ServerError
	if err := protocol.ErrorReply("boom").Err(); !errors.As(err, &se) || se.Message != "boom" {
		t.Errorf("Err() = %v", err)
	}
	if err := protocol.OKReply().Err(); err != nil {
		t.Errorf("OK Err() = %v", err)
	}
}

func TestWriteReply(t *testing.T) {
	var buf bytes.Buffer
	if err := protocol.WriteReply(&buf, protocol.EmptyReply()); err != nil {
		t.Fatal(err)
	}
	if got := buf.String(); got != "\x05\x00\x00\x00EMPTY" {
		t.Fatalf("wrote %q", got)
	}
}

func TestParseFetchPayload(t *testing.T) {
	tests := []struct {
		in      string
		next    uint64
		payload string
		bad     bool
	}{
		{"3 hello world", 3, "hello world", false},
		{"1 ", 1, "", false},
		{"1", 1, "", false},
		{"0  x", 0, " x", false},
		{"x hello", 0, "", true},
		{"", 0, "", true},
		{"-1 a", 0, "", true},
	}
	for _, tt := range tests {
		next, p, err := protocol.ParseFetchPayload([]byte(tt.in))
		if tt.bad {
			if !errors.Is(err, protocol.ErrMalformedReply) {
				t.Errorf("ParseFetchPayload(%q) = %v, want ErrMalformedReply", tt.in, err)
			}
			continue
		}
		if err != nil || next != tt.next || string(p) != tt.payload {
			t.Errorf("ParseFetchPayload(%q) = %d %q %v", tt.in, next, p, err)
		}
	}
}

func TestReplyKind_String(t *testing.T) {
	for k, want := range map[protocol.ReplyKind]string{
		protocol.ReplyInvalid: "Invalid", protocol.ReplyOK: "OK", protocol.ReplyOKPayload: "OKPayload",
		protocol.ReplyEmpty: "Empty", protocol.ReplyErr: "Err", protocol.ReplyRaw: "Raw",
	} {
		if got := k.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", k, got, want)
		}
	}
}
