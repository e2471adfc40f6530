package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// CommandType tags a metadata command in the Raft log.
type CommandType string

// Metadata commands. Each is applied deterministically by the FSM; a
// command that names a segment names the epoch it expects, and applies only
// if the metadata still matches (otherwise it is a no-op and Result.Applied
// is false with the reason).
const (
	CmdUpsertNode    CommandType = "upsert_node"
	CmdRemoveNode    CommandType = "remove_node"
	CmdCreateTopic   CommandType = "create_topic"
	CmdDeleteTopic   CommandType = "delete_topic"
	CmdRollover      CommandType = "rollover"
	CmdFailover      CommandType = "failover"
	CmdFinalizeSeal  CommandType = "finalize_seal"
	CmdAdvanceCursor CommandType = "advance_cursor"
	CmdCommitGroup   CommandType = "commit_group"
	CmdSetCapture    CommandType = "set_capture"
	CmdTrimTopic     CommandType = "trim_topic"
)

// Command is one metadata change. Only the fields of its Type are used.
type Command struct {
	Type CommandType `json:"type"`

	// CmdUpsertNode.
	Node *NodeInfo `json:"node,omitempty"`
	// CmdRemoveNode, and the leader of a new topic or segment. For
	// CmdCreateTopic, CmdRollover and CmdFailover a proposer may leave it 0:
	// the Raft leader, which knows which members it can reach, chooses
	// before the command enters the log (a 0 that reaches the FSM is
	// refused like any non-member).
	NodeID NodeID `json:"node_id,omitempty"`

	// Topic commands. For CmdTrimTopic, Segment is the first segment to
	// keep: every segment before it is deleted (they must all be sealed).
	Topic   string `json:"topic,omitempty"`
	Segment uint64 `json:"segment,omitempty"` // the segment the command expects to find open (or pending)
	Epoch   uint64 `json:"epoch,omitempty"`   // ... at this epoch
	// Count is the sealed segment's entry count, taken from its leader's
	// storage (CmdRollover, CmdFinalizeSeal).
	Count uint64 `json:"count,omitempty"`
	// Bytes is the sealed segment's size in storage, and Time (Unix
	// nanoseconds, the proposer's clock) when it was sealed (CmdRollover,
	// CmdFinalizeSeal): what retention by size and age goes by. The FSM
	// takes both from the command, never from its own clock, so every
	// replica records the same.
	Bytes int64 `json:"bytes,omitempty"`
	Time  int64 `json:"time,omitempty"`
	// MaxEntries is the entry limit of the segment the command opens
	// (CmdCreateTopic, CmdRollover, CmdFailover).
	MaxEntries uint64 `json:"max_entries,omitempty"`

	// CmdAdvanceCursor: compare-and-set of the shared cursor. Token is the
	// proposer's unique id for this move: a replay of a move that already
	// applied (after an unknown outcome) answers Applied without moving the
	// cursor again, as long as the move is among the topic's last
	// maxCursorMoves (see Result.TokenForgotten).
	From  uint64 `json:"from,omitempty"`
	To    uint64 `json:"to,omitempty"`
	Token string `json:"token,omitempty"`

	// CmdCommitGroup: moves the group's offset forward to Offset (never
	// back: a late commit from a slow consumer is a no-op).
	Group  string `json:"group,omitempty"`
	Offset uint64 `json:"offset,omitempty"`

	// CmdSetCapture: the NATS subjects captured into the topic (replacing
	// the previous list; empty removes them).
	Subjects []string `json:"subjects,omitempty"`
}

// Result is the FSM's answer to a command.
type Result struct {
	// Applied reports whether the command changed the metadata. A command
	// that finds nothing to do (the topic exists, the segment was already
	// rolled over, the cursor moved) is not an error: Applied is false and
	// Reason says why.
	Applied bool   `json:"applied"`
	Reason  string `json:"reason,omitempty"`
	// Index is the Raft index at which the command was applied.
	Index uint64 `json:"index"`
	// Cursor is the shared cursor after a CmdAdvanceCursor, and the
	// group's offset after a CmdCommitGroup.
	Cursor uint64 `json:"cursor,omitempty"`
	// Segment is the segment a topic command left open.
	Segment uint64 `json:"segment,omitempty"`
	// TokenForgotten qualifies a CmdAdvanceCursor that did not apply
	// because the cursor had moved past From: the moves since From are no
	// longer all remembered, so if the command replays an earlier proposal
	// of the same move, whether that one applied is unknown. For a first
	// proposal it means what a plain "cursor moved" means.
	TokenForgotten bool `json:"token_forgotten,omitempty"`
}

// Errors of the cluster package.
var (
	// ErrNotLeader reports a proposal on a node that is not the Raft leader.
	ErrNotLeader = errors.New("cluster: not the raft leader")
	// ErrNoLeader reports that no Raft leader is known.
	ErrNoLeader = errors.New("cluster: no raft leader known")
	// ErrInvalidCommand reports a command that cannot be encoded or applied.
	ErrInvalidCommand = errors.New("cluster: invalid command")
	// ErrNodeReplaced reports a join under a known node id from another data
	// directory: the old member must be removed first.
	ErrNodeReplaced = errors.New("cluster: node id is registered with another data directory")
	// ErrShutdown reports a call after Shutdown.
	ErrShutdown = errors.New("cluster: node shut down")
	// ErrOutcomeUnknown reports a proposal whose leader lost leadership
	// before it knew whether the command committed. Every command is safe to
	// propose again: creates and node updates are idempotent, segment
	// commands name their epoch, and cursor moves carry a token the FSM
	// remembers (for the last moves of the topic: a replay older than
	// those is answered Result.TokenForgotten, never wrongly).
	ErrOutcomeUnknown = errors.New("cluster: outcome unknown")
)

// Encode returns the command's log entry bytes.
func (c *Command) Encode() ([]byte, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	return json.Marshal(c)
}

// DecodeCommand parses a log entry.
func DecodeCommand(b []byte) (Command, error) {
	var c Command
	if err := json.Unmarshal(b, &c); err != nil {
		return Command{}, fmt.Errorf("%w: %w", ErrInvalidCommand, err)
	}
	if err := c.validate(); err != nil {
		return Command{}, err
	}
	return c, nil
}

// validate checks the fields a command's type needs.
func (c *Command) validate() error {
	bad := func(what string) error { return fmt.Errorf("%w: %s needs %s", ErrInvalidCommand, c.Type, what) }
	switch c.Type {
	case CmdUpsertNode:
		if c.Node == nil || c.Node.ID == 0 || c.Node.UUID == "" {
			return bad("a node with an id and a uuid")
		}
	case CmdRemoveNode:
		if c.NodeID == 0 {
			return bad("a node id")
		}
	case CmdCreateTopic:
		if c.Topic == "" || c.MaxEntries == 0 {
			return bad("a topic and max entries")
		}
	case CmdDeleteTopic:
		if c.Topic == "" {
			return bad("a topic")
		}
	case CmdRollover, CmdFailover:
		if c.Topic == "" || c.Segment == 0 || c.MaxEntries == 0 {
			return bad("a topic, a segment and max entries")
		}
	case CmdFinalizeSeal:
		if c.Topic == "" || c.Segment == 0 {
			return bad("a topic and a segment")
		}
	case CmdAdvanceCursor:
		if c.Topic == "" || c.To <= c.From {
			return bad("a topic and a cursor move forward")
		}
	case CmdCommitGroup:
		if c.Topic == "" || c.Group == "" {
			return bad("a topic and a group")
		}
	case CmdSetCapture:
		if c.Topic == "" || slices.Contains(c.Subjects, "") {
			return bad("a topic and non-empty subjects")
		}
	case CmdTrimTopic:
		if c.Topic == "" || c.Segment == 0 {
			return bad("a topic and the first segment to keep")
		}
	default:
		return fmt.Errorf("%w: unknown type %q", ErrInvalidCommand, c.Type)
	}
	return nil
}
