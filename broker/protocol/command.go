package protocol

import (
	"bytes"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Verb identifies a command. Verbs are case-sensitive on the wire.
type Verb uint8

// The verbs. REGISTER, PUT, GET, STATE and METRICS are the original's
// complete set; FETCH and PING are Walrus extensions.
const (
	// VerbUnknown is the zero Verb; it never parses.
	VerbUnknown Verb = iota
	// VerbRegister is "REGISTER <topic>": create the topic if absent → OK.
	VerbRegister
	// VerbPut is "PUT <topic> <payload>": append → OK.
	VerbPut
	// VerbGet is "GET <topic>": destructive read of the topic's shared
	// cursor → "OK <payload>" or EMPTY.
	VerbGet
	// VerbState is "STATE <topic>": topic metadata as raw JSON.
	VerbState
	// VerbMetrics is "METRICS": node metrics as raw JSON.
	VerbMetrics
	// VerbFetch is "FETCH <topic> <segment> <offset>": non-destructive read
	// by position → "OK <next_offset> <payload>" or EMPTY (extension).
	VerbFetch
	// VerbPing is "PING" → "OK PONG" (extension: health check).
	VerbPing
)

var verbNames = [...]string{
	VerbUnknown:  "UNKNOWN",
	VerbRegister: "REGISTER",
	VerbPut:      "PUT",
	VerbGet:      "GET",
	VerbState:    "STATE",
	VerbMetrics:  "METRICS",
	VerbFetch:    "FETCH",
	VerbPing:     "PING",
}

// String returns the verb as written on the wire ("UNKNOWN" for
// VerbUnknown and out-of-range values).
func (v Verb) String() string {
	if int(v) < len(verbNames) {
		return verbNames[v]
	}
	return verbNames[VerbUnknown]
}

// ParseVerb returns the Verb for its exact (case-sensitive) wire spelling,
// or VerbUnknown.
func ParseVerb(s string) Verb {
	switch s {
	case "REGISTER":
		return VerbRegister
	case "PUT":
		return VerbPut
	case "GET":
		return VerbGet
	case "STATE":
		return VerbState
	case "METRICS":
		return VerbMetrics
	case "FETCH":
		return VerbFetch
	case "PING":
		return VerbPing
	}
	return VerbUnknown
}

// hasTopic reports whether the verb takes a topic argument.
func (v Verb) hasTopic() bool {
	switch v {
	case VerbRegister, VerbPut, VerbGet, VerbState, VerbFetch:
		return true
	}
	return false
}

// missingTopicMsg returns the reply text for a missing or empty topic.
func (v Verb) missingTopicMsg() string {
	switch v {
	case VerbRegister:
		return MsgRegisterRequiresTopic
	case VerbPut:
		return MsgPutRequiresTopic
	case VerbGet:
		return MsgGetRequiresTopic
	case VerbState:
		return MsgStateRequiresTopic
	case VerbFetch:
		return MsgFetchRequiresArgs
	}
	return MsgUnknownCommand
}

// Command is one parsed request. Fields a verb does not use are zero.
type Command struct {
	// Verb is the command.
	Verb Verb
	// Topic is the topic of REGISTER, PUT, GET, STATE and FETCH; never
	// empty and never containing an ASCII space once parsed.
	Topic string
	// Payload is the PUT payload, verbatim after the second space
	// (including leading spaces; trailing whitespace is trimmed by Parse).
	// Parse returns a sub-slice of the body it was given.
	Payload []byte
	// Segment is FETCH's segment id.
	Segment uint64
	// Offset is FETCH's entry index within Segment (0-based).
	Offset uint64
}

var space = []byte{' '}

// Parse parses a request body with the original server's rules:
//
//  1. The body must be valid UTF-8 ("invalid utf-8").
//  2. Trailing Unicode whitespace is trimmed (so a PUT payload loses its
//     trailing spaces and newlines, as in the original).
//  3. The text is split on the first two single ASCII spaces into verb,
//     arg1 and rest. Tabs and other whitespace are not separators.
//  4. The verb is case-sensitive; an empty or unknown verb is
//     "unknown command".
//  5. REGISTER, GET and STATE use arg1 as the topic and ignore rest
//     ("GET t x" is "GET t"). METRICS and PING ignore all arguments.
//     The topic must not be empty (from a double space) nor consist of
//     whitespace ("<VERB> requires a topic"), nor end in whitespace
//     ("invalid topic ...").
//  6. PUT uses rest, verbatim, as the payload.
//  7. FETCH reads "<segment> <offset>" from rest, both unsigned decimal;
//     tokens after the offset are ignored.
//
// Deliberate differences: the original accepted an empty topic produced by
// a double space ("REGISTER  x" named topic "") and topics ending in
// whitespace reachable through an extra token ("REGISTER t\t x" named
// "t\t", a topic GET could never name, since "GET t\t" is trimmed to
// "GET t"). Parse rejects both. Errors are *CommandError values whose Msg
// is the exact reply text. The returned Payload aliases body.
func Parse(body []byte) (Command, error) {
	if !utf8.Valid(body) {
		return Command{}, &CommandError{Msg: MsgInvalidUTF8, Err: ErrInvalidUTF8}
	}
	text := bytes.TrimRightFunc(body, unicode.IsSpace)
	op, after, hasArg1 := bytes.Cut(text, space)
	var arg1, rest []byte
	hasRest := false
	if hasArg1 {
		arg1, rest, hasRest = bytes.Cut(after, space)
	}

	verb := ParseVerb(string(op))
	cmd := Command{Verb: verb}
	switch verb {
	case VerbUnknown:
		return Command{}, &CommandError{Msg: MsgUnknownCommand, Err: ErrUnknownCommand}
	case VerbMetrics, VerbPing:
		return cmd, nil
	}

	cmd.Topic = string(arg1)
	if err := validateTopic(verb, cmd.Topic); err != nil {
		return Command{}, err
	}
	switch verb {
	case VerbPut:
		if !hasRest || len(rest) == 0 {
			return Command{}, &CommandError{Verb: verb, Msg: MsgPutRequiresPayload, Err: ErrMissingPayload}
		}
		cmd.Payload = rest
	case VerbFetch:
		seg, off, ok := parseFetchArgs(rest, hasRest)
		if !ok {
			return Command{}, &CommandError{Verb: verb, Msg: MsgFetchRequiresArgs, Err: ErrInvalidArgument}
		}
		cmd.Segment, cmd.Offset = seg, off
	}
	return cmd, nil
}

// parseFetchArgs parses "<segment> <offset>[ ignored...]".
func parseFetchArgs(rest []byte, present bool) (seg, off uint64, ok bool) {
	if !present {
		return 0, 0, false
	}
	segText, after, found := bytes.Cut(rest, space)
	if !found {
		return 0, 0, false
	}
	offText, _, _ := bytes.Cut(after, space)
	seg, err := strconv.ParseUint(string(segText), 10, 64)
	if err != nil {
		return 0, 0, false
	}
	off, err = strconv.ParseUint(string(offText), 10, 64)
	if err != nil {
		return 0, 0, false
	}
	return seg, off, true
}

// missingTopic returns the CommandError for a missing or empty topic.
func missingTopic(v Verb) *CommandError {
	return &CommandError{Verb: v, Msg: v.missingTopicMsg(), Err: ErrMissingTopic}
}

// Validate reports whether c can be sent so that the server parses it back
// unchanged. The topic must be non-empty, valid UTF-8, free of ASCII spaces
// (a space would silently shift the remaining tokens: "PUT a b c" is topic
// "a", payload "b c") and must not end in whitespace (Parse rejects it). A
// PUT payload must be valid UTF-8 and not all whitespace. Trailing
// whitespace in a payload is allowed but is trimmed by the server, as in
// the original.
func (c Command) Validate() error {
	if c.Verb == VerbUnknown || int(c.Verb) >= len(verbNames) {
		return &CommandError{Msg: MsgUnknownCommand, Err: ErrUnknownCommand}
	}
	if !c.Verb.hasTopic() {
		return nil
	}
	if err := validateTopic(c.Verb, c.Topic); err != nil {
		return err
	}
	if c.Verb == VerbPut {
		if !utf8.Valid(c.Payload) {
			return &CommandError{Verb: c.Verb, Msg: MsgInvalidUTF8, Err: ErrInvalidUTF8}
		}
		if len(bytes.TrimRightFunc(c.Payload, unicode.IsSpace)) == 0 {
			return &CommandError{Verb: c.Verb, Msg: MsgPutRequiresPayload, Err: ErrMissingPayload}
		}
	}
	return nil
}

// validateTopic checks a topic for Parse and Validate.
func validateTopic(v Verb, topic string) error {
	if strings.TrimRightFunc(topic, unicode.IsSpace) == "" {
		return missingTopic(v)
	}
	invalid := func(why string) error {
		return &CommandError{Verb: v, Msg: MsgInvalidTopicPrefix + strconv.Quote(topic) + ": " + why, Err: ErrInvalidTopic}
	}
	if !utf8.ValidString(topic) {
		return invalid("not valid utf-8")
	}
	if strings.IndexByte(topic, ' ') >= 0 {
		return invalid("contains a space")
	}
	if r, _ := utf8.DecodeLastRuneInString(topic); unicode.IsSpace(r) {
		return invalid("ends in whitespace")
	}
	return nil
}

// Encode returns the request text a client sends for c (the frame body,
// without the length prefix). It does not validate; see Validate.
func (c Command) Encode() []byte {
	n := len(c.Verb.String()) + 1 + len(c.Topic) + 1 + len(c.Payload)
	if c.Verb == VerbFetch {
		n += 2 * 21
	}
	b := make([]byte, 0, n)
	b = append(b, c.Verb.String()...)
	switch c.Verb {
	case VerbRegister, VerbGet, VerbState:
		b = append(b, ' ')
		b = append(b, c.Topic...)
	case VerbPut:
		b = append(b, ' ')
		b = append(b, c.Topic...)
		b = append(b, ' ')
		b = append(b, c.Payload...)
	case VerbFetch:
		b = append(b, ' ')
		b = append(b, c.Topic...)
		b = append(b, ' ')
		b = strconv.AppendUint(b, c.Segment, 10)
		b = append(b, ' ')
		b = strconv.AppendUint(b, c.Offset, 10)
	}
	return b
}

// String returns Encode as a string. It includes a PUT's payload.
func (c Command) String() string { return string(c.Encode()) }

// label names the command in error messages without its payload.
func (c Command) label() string {
	if c.Verb.hasTopic() {
		return c.Verb.String() + " " + c.Topic
	}
	return c.Verb.String()
}
