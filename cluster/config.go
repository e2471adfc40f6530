package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
)

// Config configures a Node. The zero value of every optional field means its
// default; New never writes back into the caller's Config.
type Config struct {
	// ID is this node's id and Raft server id. Required, not 0.
	ID NodeID
	// Dir holds the Raft data: the raft-wal log and stable store in Dir/wal,
	// snapshots in Dir/snapshots (the last two are kept). Required.
	Dir string
	// BindAddr is the host:port the Raft and join listener binds. Port 0
	// picks a free port (AdvertiseAddr then takes the chosen port). Required.
	BindAddr string
	// AdvertiseAddr is the host:port other nodes dial. Default BindAddr; its
	// host must not be unspecified (0.0.0.0, ::).
	AdvertiseAddr string
	// Self is this node's record in the metadata. Its ID is ID (0 means ID)
	// and its UUID is required; its RaftAddr is set to the advertised address.
	Self NodeInfo
	// Join lists Raft addresses of existing nodes. With no Raft state, an
	// empty Join bootstraps a one-node cluster and a non-empty one joins
	// through them. Ignored when Raft state exists.
	Join []string
	// BootstrapExpect, when above 1, makes a node with no Raft state and a
	// Join list bootstrap only once that many nodes, itself included, are
	// known to have no Raft state either (they answer joins "fresh"), and
	// only if its id is the lowest of them; any other answer (a member, a
	// node with state) makes it join. Every node of a new cluster gets the
	// same Join list and BootstrapExpect: exactly one bootstraps, and a
	// node that lost its data later joins (and is refused as replaced)
	// instead of starting a second cluster.
	BootstrapExpect int
	// JoinTimeout bounds how long Start keeps trying to join, and, when
	// restarting from existing state, how long it waits for a leader and for
	// this node to catch up. Default 60s.
	JoinTimeout time.Duration

	// HeartbeatTimeout, ElectionTimeout, LeaderLeaseTimeout and CommitTimeout
	// are Raft's timers. Defaults 1s, 1s, 500ms and 50ms.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	// SnapshotThreshold is how many log entries since the last snapshot
	// trigger a new one (default 8192), checked every SnapshotInterval
	// (default 2m). TrailingLogs entries are kept after a snapshot so slow
	// followers can catch up without one (default 10240).
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	TrailingLogs      uint64
	// WALSegmentSize is the size in bytes of a raft-wal segment file, which
	// raft-wal preallocates. Default 64 MiB (raft-wal's default).
	WALSegmentSize int64

	// Logger receives the node's logs and, at component=raft, Raft's.
	// Default: a logger that discards everything.
	Logger *slog.Logger
}

// Defaults of Config.
const (
	DefaultJoinTimeout = 60 * time.Second
	snapshotsRetained  = 2
	transportMaxPool   = 3
	transportTimeout   = 10 * time.Second
)

// withDefaults returns a copy of c with the defaults filled in.
func (c Config) withDefaults() Config {
	def := raft.DefaultConfig()
	setDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	setDur(&c.JoinTimeout, DefaultJoinTimeout)
	setDur(&c.HeartbeatTimeout, def.HeartbeatTimeout)
	setDur(&c.ElectionTimeout, def.ElectionTimeout)
	setDur(&c.LeaderLeaseTimeout, def.LeaderLeaseTimeout)
	setDur(&c.CommitTimeout, def.CommitTimeout)
	setDur(&c.SnapshotInterval, def.SnapshotInterval)
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = def.SnapshotThreshold
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = def.TrailingLogs
	}
	if c.AdvertiseAddr == "" {
		c.AdvertiseAddr = c.BindAddr
	}
	if c.Self.ID == 0 {
		c.Self.ID = c.ID
	}
	c.Join = append([]string(nil), c.Join...)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports whether the configuration can be used, after defaults.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.ID == 0 {
		bad("id must not be 0")
	}
	if c.Dir == "" {
		bad("dir is required")
	}
	if _, _, err := splitHostPort(c.BindAddr); err != nil {
		bad("bind address: %w", err)
	}
	if host, port, err := splitHostPort(c.AdvertiseAddr); err != nil {
		bad("advertise address: %w", err)
	} else if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		bad("advertise address %q: the host must be one other nodes can dial (set AdvertiseAddr)", c.AdvertiseAddr)
	} else if port == 0 && c.AdvertiseAddr != c.BindAddr {
		bad("advertise address %q: port 0 is only allowed when it defaults to the bind address", c.AdvertiseAddr)
	}
	if c.Self.ID != c.ID {
		bad("self id %d differs from id %d", c.Self.ID, c.ID)
	}
	if c.Self.UUID == "" {
		bad("self uuid is required")
	}
	for _, a := range c.Join {
		if _, _, err := splitHostPort(a); err != nil {
			bad("join address: %w", err)
		}
	}
	if err := CheckBootstrapExpect(c.BootstrapExpect, c.Join); err != nil {
		bad("%w", err)
	}
	if c.JoinTimeout < 0 || c.WALSegmentSize < 0 {
		bad("negative join timeout or wal segment size")
	}
	if err := raft.ValidateConfig(c.raftConfig(nil)); err != nil {
		bad("raft: %w", err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cluster: invalid config: %w", err)
	}
	return nil
}

// raftConfig returns the hashicorp/raft configuration for c (defaults
// applied).
func (c Config) raftConfig(logger *hclogAdapter) *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raftID(c.ID)
	rc.HeartbeatTimeout = c.HeartbeatTimeout
	rc.ElectionTimeout = c.ElectionTimeout
	rc.LeaderLeaseTimeout = c.LeaderLeaseTimeout
	rc.CommitTimeout = c.CommitTimeout
	rc.SnapshotThreshold = c.SnapshotThreshold
	rc.SnapshotInterval = c.SnapshotInterval
	rc.TrailingLogs = c.TrailingLogs
	if logger != nil {
		rc.Logger = logger
	}
	return rc
}

// splitHostPort parses host:port with a numeric port.
func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("address %q: bad port: %w", addr, err)
	}
	return host, int(port), nil
}

// raftID and nodeID convert between NodeID and raft.ServerID (decimal).
func raftID(id NodeID) raft.ServerID { return raft.ServerID(strconv.FormatUint(uint64(id), 10)) }

func nodeID(id raft.ServerID) NodeID {
	v, err := strconv.ParseUint(string(id), 10, 64)
	if err != nil {
		return 0
	}
	return NodeID(v)
}

// CheckBootstrapExpect checks BootstrapExpect against the Join list: the
// list must name every one of the expected nodes (this one may be left
// out). A list longer than the count would let two groups of new nodes
// each reach it and bootstrap two clusters.
func CheckBootstrapExpect(expect int, join []string) error {
	if expect == 0 {
		return nil
	}
	if expect < 2 {
		return fmt.Errorf("bootstrap expect %d: give 0 (off) or the number of nodes, at least 2", expect)
	}
	n := len(slices.Compact(slices.Sorted(slices.Values(join))))
	if n < expect-1 || n > expect {
		return fmt.Errorf("bootstrap expect %d: the join list names %d distinct addresses; it must name every node of the new cluster (%d, or %d without this one)",
			expect, n, expect, expect-1)
	}
	return nil
}
