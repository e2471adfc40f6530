package protocol_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/walrus-edge/walrus/broker/protocol"
)

// parseCase is one row of the reference's bad-input table and parsing rules
// (reference-behaviour.md §1.2 and §1.3).
type parseCase struct {
	name string
	body string
	want protocol.Command // when msg == ""
	msg  string           // expected reply text after "ERR "
	err  error            // expected sentinel
}

func cmd(v protocol.Verb, topic, payload string) protocol.Command {
	c := protocol.Command{Verb: v, Topic: topic}
	if payload != "" {
		c.Payload = []byte(payload)
	}
	return c
}

var parseCases = []parseCase{
	// §1.2 bad input.
	{name: "empty body", body: "", msg: "unknown command", err: protocol.ErrUnknownCommand},
	{name: "whitespace only", body: " \t\r\n", msg: "unknown command", err: protocol.ErrUnknownCommand},
	{name: "crlf only", body: "\r\n", msg: "unknown command", err: protocol.ErrUnknownCommand},
	{name: "invalid utf-8", body: "\xff\xfe", msg: "invalid utf-8", err: protocol.ErrInvalidUTF8},
	{name: "invalid utf-8 in payload", body: "PUT t \xc3\x28", msg: "invalid utf-8", err: protocol.ErrInvalidUTF8},
	{name: "truncated utf-8 at end", body: "PUT t x\xe2\x82", msg: "invalid utf-8", err: protocol.ErrInvalidUTF8},
	{name: "lowercase put", body: "put t x", msg: "unknown command", err: protocol.ErrUnknownCommand},
	{name: "mixed case Get", body: "Get t", msg: "unknown command", err: protocol.ErrUnknownCommand},
	{name: "lowercase fetch", body: "fetch t 1 0", msg: "unknown command", err: protocol.ErrUnknownCommand},
	{name: "garbage", body: "GARBAGE", msg: "unknown command", err: protocol.ErrUnknownCommand},
	{name: "leading space", body: " GET t", msg: "unknown command", err: protocol.ErrUnknownCommand},
	{name: "tab is not a separator", body: "GET\tt", msg: "unknown command", err: protocol.ErrUnknownCommand},
	{name: "verb prefix", body: "GETX t", msg: "unknown command", err: protocol.ErrUnknownCommand},

	// Missing arguments.
	{name: "register no topic", body: "REGISTER", msg: "REGISTER requires a topic", err: protocol.ErrMissingTopic},
	{name: "register trailing space", body: "REGISTER ", msg: "REGISTER requires a topic", err: protocol.ErrMissingTopic},
	{name: "register empty topic (double space)", body: "REGISTER  x", msg: "REGISTER requires a topic", err: protocol.ErrMissingTopic},
	{name: "put no topic", body: "PUT", msg: "PUT requires a topic", err: protocol.ErrMissingTopic},
	{name: "put empty topic", body: "PUT  t x", msg: "PUT requires a topic", err: protocol.ErrMissingTopic},
	{name: "put no payload", body: "PUT t", msg: "PUT requires a payload", err: protocol.ErrMissingPayload},
	{name: "put space payload", body: "PUT t ", msg: "PUT requires a payload", err: protocol.ErrMissingPayload},
	{name: "put whitespace payload", body: "PUT t  \t\r\n", msg: "PUT requires a payload", err: protocol.ErrMissingPayload},
	{name: "get no topic", body: "GET", msg: "GET requires a topic", err: protocol.ErrMissingTopic},
	{name: "get empty topic", body: "GET  t", msg: "GET requires a topic", err: protocol.ErrMissingTopic},
	{name: "state no topic", body: "STATE", msg: "STATE requires a topic", err: protocol.ErrMissingTopic},
	{name: "state crlf", body: "STATE\r\n", msg: "STATE requires a topic", err: protocol.ErrMissingTopic},
	{name: "whitespace topic before extra token", body: "GET \r 0", msg: "GET requires a topic", err: protocol.ErrMissingTopic},
	{name: "whitespace topic fetch", body: "FETCH \t 1 2", msg: protocol.MsgFetchRequiresArgs, err: protocol.ErrMissingTopic},
	{name: "topic ending in tab (register)", body: "REGISTER t\t x", msg: `invalid topic "t\t": ends in whitespace`, err: protocol.ErrInvalidTopic},
	{name: "topic ending in tab (put)", body: "PUT t\t x", msg: `invalid topic "t\t": ends in whitespace`, err: protocol.ErrInvalidTopic},

	// §1.3 parsing rules.
	{name: "register", body: "REGISTER logs", want: cmd(protocol.VerbRegister, "logs", "")},
	{name: "register extra tokens", body: "REGISTER logs x y", want: cmd(protocol.VerbRegister, "logs", "")},
	{name: "get", body: "GET logs", want: cmd(protocol.VerbGet, "logs", "")},
	{name: "get extra token", body: "GET t x", want: cmd(protocol.VerbGet, "t", "")},
	{name: "get crlf trimmed", body: "GET t\r\n", want: cmd(protocol.VerbGet, "t", "")},
	{name: "get unicode space trimmed", body: "GET t\u00a0\u2003", want: cmd(protocol.VerbGet, "t", "")},
	{name: "state", body: "STATE logs", want: cmd(protocol.VerbState, "logs", "")},
	{name: "state extra", body: "STATE logs now", want: cmd(protocol.VerbState, "logs", "")},
	{name: "metrics", body: "METRICS", want: cmd(protocol.VerbMetrics, "", "")},
	{name: "metrics extra tokens", body: "METRICS please now", want: cmd(protocol.VerbMetrics, "", "")},
	{name: "ping", body: "PING", want: cmd(protocol.VerbPing, "", "")},
	{name: "ping extra", body: "PING x", want: cmd(protocol.VerbPing, "", "")},
	{name: "put", body: "PUT logs hello", want: cmd(protocol.VerbPut, "logs", "hello")},
	{name: "put spaces kept", body: "PUT logs hello big world", want: cmd(protocol.VerbPut, "logs", "hello big world")},
	{name: "put leading spaces kept", body: "PUT logs   x", want: cmd(protocol.VerbPut, "logs", "  x")},
	{name: "put inner double space kept", body: "PUT logs a  b", want: cmd(protocol.VerbPut, "logs", "a  b")},
	{name: "put trailing whitespace lost", body: "PUT logs hello  \t\r\n", want: cmd(protocol.VerbPut, "logs", "hello")},
	{name: "put tab in payload", body: "PUT logs a\tb", want: cmd(protocol.VerbPut, "logs", "a\tb")},
	{name: "put newline inside payload", body: "PUT logs a\nb\n", want: cmd(protocol.VerbPut, "logs", "a\nb")},
	{name: "put tab in topic", body: "PUT t\tx y", want: cmd(protocol.VerbPut, "t\tx", "y")},
	{name: "get leading tab in topic", body: "GET \tt", want: cmd(protocol.VerbGet, "\tt", "")},
	{name: "put quotes kept", body: `PUT logs "hello world"`, want: cmd(protocol.VerbPut, "logs", `"hello world"`)},
	{name: "put unicode", body: "PUT tópico ✓ ok", want: cmd(protocol.VerbPut, "tópico", "✓ ok")},
	{name: "put payload looks like verb", body: "PUT t GET t", want: cmd(protocol.VerbPut, "t", "GET t")},

	// FETCH (Walrus extension).
	{name: "fetch", body: "FETCH logs 1 0", want: protocol.Command{Verb: protocol.VerbFetch, Topic: "logs", Segment: 1, Offset: 0}},
	{name: "fetch big numbers", body: "FETCH logs 18446744073709551615 42", want: protocol.Command{Verb: protocol.VerbFetch, Topic: "logs", Segment: 1<<64 - 1, Offset: 42}},
	{name: "fetch extra tokens", body: "FETCH logs 2 5 junk", want: protocol.Command{Verb: protocol.VerbFetch, Topic: "logs", Segment: 2, Offset: 5}},
	{name: "fetch leading zeros", body: "FETCH logs 01 007", want: protocol.Command{Verb: protocol.VerbFetch, Topic: "logs", Segment: 1, Offset: 7}},
	{name: "fetch no args", body: "FETCH", msg: protocol.MsgFetchRequiresArgs, err: protocol.ErrMissingTopic},
	{name: "fetch empty topic", body: "FETCH  1 2", msg: protocol.MsgFetchRequiresArgs, err: protocol.ErrMissingTopic},
	{name: "fetch topic only", body: "FETCH t", msg: protocol.MsgFetchRequiresArgs, err: protocol.ErrInvalidArgument},
	{name: "fetch no offset", body: "FETCH t 1", msg: protocol.MsgFetchRequiresArgs, err: protocol.ErrInvalidArgument},
	{name: "fetch bad segment", body: "FETCH t x 0", msg: protocol.MsgFetchRequiresArgs, err: protocol.ErrInvalidArgument},
	{name: "fetch negative offset", body: "FETCH t 1 -2", msg: protocol.MsgFetchRequiresArgs, err: protocol.ErrInvalidArgument},
	{name: "fetch plus sign", body: "FETCH t 1 +2", msg: protocol.MsgFetchRequiresArgs, err: protocol.ErrInvalidArgument},
	{name: "fetch overflow", body: "FETCH t 18446744073709551616 0", msg: protocol.MsgFetchRequiresArgs, err: protocol.ErrInvalidArgument},
	{name: "fetch double space", body: "FETCH t 1  2", msg: protocol.MsgFetchRequiresArgs, err: protocol.ErrInvalidArgument},
	{name: "fetch tab separated", body: "FETCH t 1\t2", msg: protocol.MsgFetchRequiresArgs, err: protocol.ErrInvalidArgument},
}

func TestParse(t *testing.T) {
	for _, tc := range parseCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := protocol.Parse([]byte(tc.body))
			if tc.msg != "" {
				var ce *protocol.CommandError
				if !errors.As(err, &ce) {
					t.Fatalf("Parse(%q) = %+v, %v; want *CommandError %q", tc.body, got, err, tc.msg)
				}
				if ce.Msg != tc.msg || protocol.ErrorMessage(err) != tc.msg {
					t.Errorf("message = %q / %q, want %q", ce.Msg, protocol.ErrorMessage(err), tc.msg)
				}
				if !errors.Is(err, tc.err) {
					t.Errorf("error %v does not wrap %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.body, err)
			}
			if !sameCommand(got, tc.want) {
				t.Fatalf("Parse(%q) = %s, want %s", tc.body, describe(got), describe(tc.want))
			}
			if err := got.Validate(); err != nil {
				t.Errorf("parsed command does not validate: %v", err)
			}
			again, err := protocol.Parse(got.Encode())
			if err != nil || !sameCommand(again, got) {
				t.Errorf("Parse(Encode()) = %s, %v; want %s", describe(again), err, describe(got))
			}
		})
	}
}

func TestParse_PayloadAliasesBody(t *testing.T) {
	body := []byte("PUT t payload")
	c, err := protocol.Parse(body)
	if err != nil {
		t.Fatal(err)
	}
	if &c.Payload[0] != &body[6] {
		t.Fatal("payload was copied; documented as a sub-slice of body")
	}
}

func TestCommand_Encode(t *testing.T) {
	tests := []struct {
		c    protocol.Command
		want string
	}{
		{protocol.Command{Verb: protocol.VerbRegister, Topic: "logs"}, "REGISTER logs"},
		{protocol.Command{Verb: protocol.VerbPut, Topic: "logs", Payload: []byte(" a b")}, "PUT logs  a b"},
		{protocol.Command{Verb: protocol.VerbGet, Topic: "logs"}, "GET logs"},
		{protocol.Command{Verb: protocol.VerbState, Topic: "logs"}, "STATE logs"},
		{protocol.Command{Verb: protocol.VerbMetrics, Topic: "ignored"}, "METRICS"},
		{protocol.Command{Verb: protocol.VerbPing}, "PING"},
		{protocol.Command{Verb: protocol.VerbFetch, Topic: "logs", Segment: 3, Offset: 9}, "FETCH logs 3 9"},
	}
	for _, tt := range tests {
		if got := tt.c.String(); got != tt.want {
			t.Errorf("Encode = %q, want %q", got, tt.want)
		}
	}
}

func TestCommand_Validate(t *testing.T) {
	tests := []struct {
		name string
		c    protocol.Command
		err  error // nil: valid
	}{
		{"register ok", protocol.Command{Verb: protocol.VerbRegister, Topic: "logs"}, nil},
		{"unknown verb", protocol.Command{}, protocol.ErrUnknownCommand},
		{"out of range verb", protocol.Command{Verb: 200, Topic: "t"}, protocol.ErrUnknownCommand},
		{"empty topic", protocol.Command{Verb: protocol.VerbGet}, protocol.ErrMissingTopic},
		{"topic with space", protocol.Command{Verb: protocol.VerbPut, Topic: "a b", Payload: []byte("x")}, protocol.ErrInvalidTopic},
		{"topic invalid utf-8", protocol.Command{Verb: protocol.VerbGet, Topic: "\xff"}, protocol.ErrInvalidTopic},
		{"last topic trailing tab", protocol.Command{Verb: protocol.VerbGet, Topic: "t\t"}, protocol.ErrInvalidTopic},
		{"last topic trailing newline", protocol.Command{Verb: protocol.VerbRegister, Topic: "t\n"}, protocol.ErrInvalidTopic},
		{"put topic trailing tab", protocol.Command{Verb: protocol.VerbPut, Topic: "t\t", Payload: []byte("x")}, protocol.ErrInvalidTopic},
		{"topic leading tab ok", protocol.Command{Verb: protocol.VerbGet, Topic: "\tt"}, nil},
		{"put empty payload", protocol.Command{Verb: protocol.VerbPut, Topic: "t"}, protocol.ErrMissingPayload},
		{"put whitespace payload", protocol.Command{Verb: protocol.VerbPut, Topic: "t", Payload: []byte(" \n")}, protocol.ErrMissingPayload},
		{"put invalid utf-8", protocol.Command{Verb: protocol.VerbPut, Topic: "t", Payload: []byte{0xff}}, protocol.ErrInvalidUTF8},
		{"put trailing newline allowed", protocol.Command{Verb: protocol.VerbPut, Topic: "t", Payload: []byte("x\n")}, nil},
		{"metrics ignores topic", protocol.Command{Verb: protocol.VerbMetrics, Topic: "a b"}, nil},
		{"fetch empty topic", protocol.Command{Verb: protocol.VerbFetch}, protocol.ErrMissingTopic},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.c.Validate()
			if tt.err == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, tt.err) {
				t.Fatalf("Validate = %v, want %v", err, tt.err)
			}
			var ce *protocol.CommandError
			if !errors.As(err, &ce) || ce.Msg == "" {
				t.Fatalf("Validate error %v is not a *CommandError with a message", err)
			}
		})
	}
}

func TestVerb_String(t *testing.T) {
	for v := protocol.VerbUnknown; v <= protocol.VerbPing; v++ {
		if v == protocol.VerbUnknown {
			continue
		}
		if got := protocol.ParseVerb(v.String()); got != v {
			t.Errorf("ParseVerb(%q) = %v, want %v", v.String(), got, v)
		}
	}
	if got := protocol.Verb(99).String(); got != "UNKNOWN" {
		t.Errorf("Verb(99) = %q", got)
	}
}

type messageErr struct{}

func (messageErr) Error() string        { return "broker: no leader" }
func (messageErr) ReplyMessage() string { return "no raft leader known" }

func TestErrorMessage(t *testing.T) {
	_, parseErr := protocol.Parse([]byte("PUT t"))
	tests := []struct {
		err  error
		want string
	}{
		{nil, ""},
		{protocol.ErrEmptyFrame, "invalid frame length"},
		{fmt.Errorf("read: %w", protocol.ErrFrameTooLarge), "invalid frame length"},
		{protocol.ErrInvalidUTF8, "invalid utf-8"},
		{protocol.ErrUnknownCommand, "unknown command"},
		{fmt.Errorf("conn 7: %w", parseErr), "PUT requires a payload"},
		{&protocol.ServerError{Message: "unknown topic x"}, "unknown topic x"},
		{fmt.Errorf("forward: %w", messageErr{}), "no raft leader known"},
		{errors.New("raft propose timed out"), "raft propose timed out"},
	}
	for _, tt := range tests {
		if got := protocol.ErrorMessage(tt.err); got != tt.want {
			t.Errorf("ErrorMessage(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
	if got := protocol.UnknownTopicMessage("logs"); got != "unknown topic logs" {
		t.Errorf("UnknownTopicMessage = %q", got)
	}
}

func sameCommand(a, b protocol.Command) bool {
	return a.Verb == b.Verb && a.Topic == b.Topic && string(a.Payload) == string(b.Payload) &&
		(a.Payload == nil) == (b.Payload == nil) && a.Segment == b.Segment && a.Offset == b.Offset
}

func describe(c protocol.Command) string {
	return fmt.Sprintf("{%v topic=%q payload=%q seg=%d off=%d}", c.Verb, c.Topic, c.Payload, c.Segment, c.Offset)
}
