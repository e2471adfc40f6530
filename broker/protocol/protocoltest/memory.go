package protocoltest

import (
	"sync"

	"github.com/walrus-edge/walrus/broker/protocol"
)

// StateJSON is the STATE reply Memory gives for every known topic: the
// original's field names and order for a freshly registered topic led by
// node 1.
const StateJSON = `{"current_segment":1,"leader_node":1,"last_sealed_entry_offset":0,"sealed_segments":{},"segment_leaders":{"1":1}}`

// MetricsJSON is the METRICS reply Memory gives: a one-node leader with the
// fields tools written for the original read.
const MetricsJSON = `{
  "running_state": {"Ok": null},
  "id": 1,
  "current_term": 1,
  "last_log_index": 1,
  "state": "Leader",
  "current_leader": 1,
  "membership_config": {"log_id": null, "membership": {"configs": [[1]], "nodes": {"1": {"addr": "127.0.0.1:6001"}}}},
  "replication": {"1": {"leader_id": {"term": 1, "node_id": 1}, "index": 1}}
}`

// Memory is a Handler with the seed's single-node semantics: topics are
// created by REGISTER, PUT to an unknown topic fails with
// "unknown topic <t>", GET consumes entries through one shared cursor per
// topic and answers EMPTY when drained, and every topic lives in segment 1
// (FETCH t 1 <i> returns entry i and next offset i+1).
type Memory struct {
	mu     sync.Mutex
	topics map[string]*memTopic
}

type memTopic struct {
	entries [][]byte
	cursor  int
}

// NewMemory returns an empty Memory.
func NewMemory() *Memory { return &Memory{topics: make(map[string]*memTopic)} }

// Handle implements Handler.
func (m *Memory) Handle(cmd protocol.Command) protocol.Reply {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch cmd.Verb {
	case protocol.VerbPing:
		return protocol.PongReply()
	case protocol.VerbMetrics:
		return protocol.RawReply([]byte(MetricsJSON))
	case protocol.VerbRegister:
		if m.topics[cmd.Topic] == nil {
			m.topics[cmd.Topic] = &memTopic{}
		}
		return protocol.OKReply()
	}
	t := m.topics[cmd.Topic]
	if t == nil {
		return protocol.ErrorReply(protocol.UnknownTopicMessage(cmd.Topic))
	}
	switch cmd.Verb {
	case protocol.VerbPut:
		t.entries = append(t.entries, append([]byte(nil), cmd.Payload...))
		return protocol.OKReply()
	case protocol.VerbGet:
		if t.cursor >= len(t.entries) {
			return protocol.EmptyReply()
		}
		t.cursor++
		return protocol.PayloadReply(t.entries[t.cursor-1])
	case protocol.VerbState:
		return protocol.RawReply([]byte(StateJSON))
	case protocol.VerbFetch:
		if cmd.Segment != 1 || cmd.Offset >= uint64(len(t.entries)) {
			return protocol.EmptyReply()
		}
		return protocol.FetchReply(cmd.Offset+1, t.entries[cmd.Offset])
	}
	return protocol.ErrorReply(protocol.MsgUnknownCommand)
}
