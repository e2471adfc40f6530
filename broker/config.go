package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/walrus-edge/walrus/bridge"
	"github.com/walrus-edge/walrus/cluster"
	"github.com/walrus-edge/walrus/storage"
)

// Config configures a node. The zero value of every field means its
// default; defaults follow the original Walrus where it had the setting.
type Config struct {
	// NodeID identifies the node in the cluster. Default 1.
	NodeID uint64
	// DataDir is the root data directory; the node keeps everything in
	// DataDir/node_<id>. Default "./data".
	DataDir string

	// RaftHost and RaftPort are where Raft and joins listen. Defaults
	// 127.0.0.1 and 6000.
	RaftHost string
	RaftPort int
	// RaftAdvertiseHost is the host other nodes dial. Default RaftHost (or
	// 127.0.0.1 when RaftHost is a wildcard).
	RaftAdvertiseHost string
	// Join lists Raft addresses (host:port) of existing nodes. Empty: a new
	// node bootstraps a one-node cluster.
	Join []string
	// BootstrapExpect, above 1, lets a new cluster's nodes share one Join
	// list: the one with the lowest id bootstraps once BootstrapExpect new
	// nodes (itself included) answer, the others join it
	// (cluster.Config.BootstrapExpect).
	BootstrapExpect int

	// ClientHost and ClientPort serve the native TCP protocol. Defaults
	// 127.0.0.1 and 8080.
	ClientHost string
	ClientPort int
	// MaxFrameBytes bounds a protocol frame. Default 65536.
	MaxFrameBytes int

	// NATSPort is the embedded NATS server's client port (default 4222) and
	// NATSClusterPort its route port (default 6222). Both bind ClientHost.
	NATSPort        int
	NATSClusterPort int
	// NATSPrefix is the first token of every public NATS subject
	// ("walrus.pub.<topic>", docs/nats.md): one literal subject token, not
	// starting with '_' or '$'. Default "walrus".
	NATSPrefix string
	// NATSMaxMessageBytes bounds an entry's payload plus headers produced
	// over NATS. Default 1 MiB, at most MaxNATSMessageBytes.
	NATSMaxMessageBytes int
	// NATSDedupWindow is how long a Nats-Msg-Id is remembered per topic.
	// Default 2 minutes. Since zero means the default, deduplication is
	// turned off with a negative value (DisableNATSDedup).
	NATSDedupWindow time.Duration
	// NATSLeafnodeURLs are upstream NATS leafnode URLs
	// ("nats-leaf://host:7422"; also nats, tls, ws, wss; user and password
	// may be in the URL). The embedded server connects to one of them as
	// a leafnode; the internal subjects (_WALRUS.>) never cross. Empty: no
	// leafnode. See bridge.Config.Leafnodes.
	NATSLeafnodeURLs []string
	// NATSClientAdvertise is the "host:port" NATS clients are told to
	// reach this node at (bridge.Config.ClientAdvertise). Default: the
	// Raft advertise host and the NATS port.
	NATSClientAdvertise string
	// NATSLeafnodeCredentials is the path of a .creds file (JWT and nkey)
	// for the upstream account; only with NATSLeafnodeURLs. Validate checks
	// that it is a readable file; the server reads it again on every
	// connection attempt, so it may be rotated in place.
	NATSLeafnodeCredentials string

	// HTTPAddr serves /metrics, /healthz and /readyz. Empty disables it.
	HTTPAddr string

	// MaxSegmentEntries rolls a segment over when it holds this many
	// entries (WALRUS_MAX_SEGMENT_ENTRIES). Default 1,000,000.
	MaxSegmentEntries uint64
	// MaxSegmentBytes rolls a segment over when it holds this many bytes.
	// Default 256 MiB.
	MaxSegmentBytes int64
	// MonitorInterval is how often the rollover monitor checks the
	// segments this node leads (WALRUS_MONITOR_CHECK_MS), and how often
	// retention runs. Default 10s.
	MonitorInterval time.Duration
	// Retention deletes topics' oldest sealed segments. The Raft leader's
	// policy is the one applied, so give every node the same. Default:
	// keep everything.
	Retention Retention

	// LeaseTimeout: a segment leader acknowledges appends only while it has
	// heard from the Raft quorum within this time. Default 2s.
	LeaseTimeout time.Duration
	// FailoverTimeout: the Raft leader fails a segment over to another
	// node when its leader has been unreachable this long. It must exceed
	// LeaseTimeout by a margin for clock drift. Default 5s.
	FailoverTimeout time.Duration
	// HeartbeatInterval is how often a node reports to the Raft leader.
	// Default 500ms.
	HeartbeatInterval time.Duration
	// RequestTimeout bounds one forwarded request. Default 5s.
	RequestTimeout time.Duration

	// RaftTiming overrides Raft's timeouts (tests). Zero means defaults.
	RaftTiming RaftTiming

	// Storage configures the segment store.
	Storage storage.Options

	// Logger receives the node's logs. Default: discard.
	Logger *slog.Logger

	// afterPropose, when set, runs on the Raft leader after a command it
	// was asked to propose (by itself or forwarded by another node) has
	// applied, before the proposer gets the answer. For tests only, set
	// through SetAfterPropose in export_test.go: a hook that blocks holds
	// the answer past the proposer's deadline, so the proposer's outcome
	// is unknown while the command did apply (what a stalled NATS route
	// does to a forwarded proposal).
	afterPropose func(cluster.Command, cluster.Result)
}

// RaftTiming holds Raft's timeouts; zero fields mean cluster defaults.
type RaftTiming struct {
	HeartbeatTimeout, ElectionTimeout, LeaderLeaseTimeout, CommitTimeout time.Duration
}

// Defaults.
const (
	DefaultDataDir           = "./data"
	DefaultRaftPort          = 6000
	DefaultClientPort        = 8080
	DefaultNATSPort          = 4222
	DefaultNATSClusterPort   = 6222
	DefaultMaxFrameBytes     = 64 << 10
	DefaultMaxSegmentEntries = 1_000_000
	DefaultMaxSegmentBytes   = 256 << 20
	DefaultMonitorInterval   = 10 * time.Second
	DefaultLeaseTimeout      = 2 * time.Second
	DefaultFailoverTimeout   = 5 * time.Second
	DefaultHeartbeatInterval = 500 * time.Millisecond
	DefaultRequestTimeout    = 5 * time.Second

	DefaultNATSPrefix          = "walrus"
	DefaultNATSMaxMessageBytes = 1 << 20
	DefaultNATSDedupWindow     = 2 * time.Minute
	// MaxNATSMessageBytes is the largest NATSMaxMessageBytes: the embedded
	// server's max payload less room for the internal RPC's framing.
	MaxNATSMessageBytes = bridge.DefaultMaxPayload - 64<<10
	// DisableNATSDedup as NATSDedupWindow turns deduplication off.
	DisableNATSDedup time.Duration = -1
)

func (c Config) withDefaults() Config {
	if c.NodeID == 0 {
		c.NodeID = 1
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.RaftHost == "" {
		c.RaftHost = "127.0.0.1"
	}
	if c.RaftPort == 0 {
		c.RaftPort = DefaultRaftPort
	}
	if c.RaftAdvertiseHost == "" {
		c.RaftAdvertiseHost = c.RaftHost
		if ip := net.ParseIP(c.RaftHost); ip != nil && ip.IsUnspecified() {
			c.RaftAdvertiseHost = "127.0.0.1"
		}
	}
	if c.ClientHost == "" {
		c.ClientHost = "127.0.0.1"
	}
	if c.ClientPort == 0 {
		c.ClientPort = DefaultClientPort
	}
	if c.MaxFrameBytes == 0 {
		c.MaxFrameBytes = DefaultMaxFrameBytes
	}
	if c.NATSPort == 0 {
		c.NATSPort = DefaultNATSPort
	}
	if c.NATSClusterPort == 0 {
		c.NATSClusterPort = DefaultNATSClusterPort
	}
	if c.MaxSegmentEntries == 0 {
		c.MaxSegmentEntries = DefaultMaxSegmentEntries
	}
	if c.MaxSegmentBytes == 0 {
		c.MaxSegmentBytes = DefaultMaxSegmentBytes
	}
	if c.MonitorInterval == 0 {
		c.MonitorInterval = DefaultMonitorInterval
	}
	if c.LeaseTimeout == 0 {
		c.LeaseTimeout = DefaultLeaseTimeout
	}
	if c.FailoverTimeout == 0 {
		c.FailoverTimeout = DefaultFailoverTimeout
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.NATSPrefix == "" {
		c.NATSPrefix = DefaultNATSPrefix
	}
	if c.NATSMaxMessageBytes == 0 {
		c.NATSMaxMessageBytes = DefaultNATSMaxMessageBytes
	}
	if c.NATSDedupWindow == 0 {
		c.NATSDedupWindow = DefaultNATSDedupWindow
	}
	c.NATSLeafnodeURLs = slices.Clone(c.NATSLeafnodeURLs)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// ErrInvalidConfig reports a Config that fails validation.
var ErrInvalidConfig = errors.New("broker: invalid config")

// Validate reports the first invalid setting (after defaults).
func (c Config) Validate() error {
	c = c.withDefaults()
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	for name, port := range map[string]int{
		"raft port": c.RaftPort, "client port": c.ClientPort,
		"nats port": c.NATSPort, "nats cluster port": c.NATSClusterPort,
	} {
		if port < 0 || port > 65535 {
			return bad("%s %d out of range", name, port)
		}
	}
	if ip := net.ParseIP(c.RaftAdvertiseHost); ip != nil && ip.IsUnspecified() {
		return bad("raft advertise host %s is a wildcard address", c.RaftAdvertiseHost)
	}
	for _, j := range c.Join {
		if _, _, err := net.SplitHostPort(j); err != nil {
			return bad("join address %q: %v", j, err)
		}
	}
	switch {
	case c.MaxFrameBytes < 64:
		return bad("max frame bytes %d is too small", c.MaxFrameBytes)
	case c.MonitorInterval < 10*time.Millisecond:
		return bad("monitor interval %v is below 10ms", c.MonitorInterval)
	// Zero means the default, so only a negative value gets here: a ticker
	// would panic on it, a lease or a request would always be expired.
	case c.HeartbeatInterval <= 0:
		return bad("heartbeat interval %v is not positive", c.HeartbeatInterval)
	case c.LeaseTimeout <= 0:
		return bad("lease timeout %v is not positive", c.LeaseTimeout)
	case c.RequestTimeout <= 0:
		return bad("request timeout %v is not positive", c.RequestTimeout)
	case c.MaxSegmentBytes <= 0:
		return bad("max segment bytes %d is not positive", c.MaxSegmentBytes)
	case c.Retention.MaxAge < 0 || c.Retention.MaxBytes < 0 || c.Retention.MaxSegments < 0:
		return bad("retention %+v: a limit is negative (0: no limit)", c.Retention)
	case c.FailoverTimeout <= c.LeaseTimeout:
		return bad("failover timeout %v must exceed the lease timeout %v", c.FailoverTimeout, c.LeaseTimeout)
	}
	if err := cluster.CheckBootstrapExpect(c.BootstrapExpect, c.Join); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if err := c.validateNATS(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if err := c.Storage.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}

// validateNATS checks the public NATS API and leafnode settings (after
// defaults).
func (c Config) validateNATS() error {
	if err := validPrefix(c.NATSPrefix); err != nil {
		return err
	}
	if c.NATSMaxMessageBytes <= 0 || c.NATSMaxMessageBytes > MaxNATSMessageBytes {
		return fmt.Errorf("nats max message bytes %d out of range (1 to %d)", c.NATSMaxMessageBytes, MaxNATSMessageBytes)
	}
	if _, err := bridge.ParseLeafnodes(c.NATSLeafnodeURLs); err != nil {
		return fmt.Errorf("nats %w", err)
	}
	if c.NATSLeafnodeCredentials == "" {
		return nil
	}
	if len(c.NATSLeafnodeURLs) == 0 {
		return errors.New("nats leafnode credentials given without a leafnode URL")
	}
	return readableFile(c.NATSLeafnodeCredentials)
}

// validPrefix checks that p is one literal NATS subject token that is not
// a system subject (_INBOX, $SYS, ...).
func validPrefix(p string) error {
	if strings.ContainsFunc(p, func(r rune) bool {
		return r == '.' || r == '*' || r == '>' || unicode.IsSpace(r) || unicode.IsControl(r)
	}) {
		return fmt.Errorf("nats prefix %q: must be one subject token (no '.', '*', '>', spaces or control characters)", p)
	}
	if strings.HasPrefix(p, "_") || strings.HasPrefix(p, "$") {
		return fmt.Errorf("nats prefix %q: must not start with '_' or '$' (reserved for system subjects)", p)
	}
	return nil
}

// readableFile checks that path is a regular file this process can open.
func readableFile(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("nats leafnode credentials: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("nats leafnode credentials %s: not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("nats leafnode credentials: %w", err)
	}
	return f.Close()
}

func (c *Config) raftAddr() string {
	return net.JoinHostPort(c.RaftHost, strconv.Itoa(c.RaftPort))
}

func (c *Config) raftAdvertise() string {
	return net.JoinHostPort(c.RaftAdvertiseHost, strconv.Itoa(c.RaftPort))
}

func (c *Config) clientAddr() string {
	return net.JoinHostPort(c.ClientHost, strconv.Itoa(c.ClientPort))
}
