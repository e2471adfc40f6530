package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/basicflag"
	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/v2"

	"github.com/walrus-edge/walrus/broker"
	"github.com/walrus-edge/walrus/storage"
)

// nodeConfig is the node's configuration as flags, env and the YAML file
// name it. Keys are the flag names; the env twin of a key is WALRUS_ and the
// key upper-cased with dashes as underscores (WALRUS_NODE_ID), which keeps
// the original's WALRUS_MAX_SEGMENT_ENTRIES, WALRUS_MONITOR_CHECK_MS and
// WALRUS_DISABLE_IO_URING.
type nodeConfig struct {
	NodeID uint64 `koanf:"node-id"`
	// NodeIDFromHostname derives NodeID from the host name of a
	// StatefulSet pod (walrus-<ordinal>): the ordinal plus one. It excludes
	// an explicit NodeID.
	NodeIDFromHostname bool `koanf:"node-id-from-hostname"`
	// BootstrapNodeID, when not 0, names the one node that bootstraps a new
	// cluster when it has no Raft state; the others join through Join. It
	// lets every node of a StatefulSet share one Join list.
	BootstrapNodeID uint64 `koanf:"bootstrap-node-id"`
	// BootstrapExpect, above 1, lets every node of a new cluster share one
	// Join list: the lowest id bootstraps once that many new nodes answer.
	BootstrapExpect   int    `koanf:"bootstrap-expect"`
	DataDir           string `koanf:"data-dir"`
	RaftHost          string `koanf:"raft-host"`
	RaftPort          int    `koanf:"raft-port"`
	RaftAdvertiseHost string `koanf:"raft-advertise-host"`
	Join              string `koanf:"join"`
	ClientHost        string `koanf:"client-host"`
	ClientPort        int    `koanf:"client-port"`
	NATSPort          int    `koanf:"nats-port"`
	NATSClusterPort   int    `koanf:"nats-cluster-port"`

	NATSPrefix        string `koanf:"nats-prefix"`
	NATSMaxMsgBytes   int    `koanf:"nats-max-message-bytes"`
	NATSDedupWindowMS int    `koanf:"nats-dedup-window-ms"`
	// NATSLeafnodeURL is a list so that the YAML file may give one; each
	// element (a flag or env value) may hold several, comma-separated.
	NATSLeafnodeURL   []string `koanf:"nats-leafnode-url"`
	NATSLeafnodeCreds string   `koanf:"nats-leafnode-credentials"`
	NATSClientAdv     string   `koanf:"nats-client-advertise"`

	HTTPPort          int    `koanf:"http-port"`
	MaxSegmentEntries uint64 `koanf:"max-segment-entries"`
	MaxSegmentBytes   int64  `koanf:"max-segment-bytes"`
	MonitorCheckMS    int    `koanf:"monitor-check-ms"`
	// Retention: durations as "168h" or "7d"; 0 or empty is no limit.
	RetentionMaxAge      string `koanf:"retention-max-age"`
	RetentionMaxBytes    int64  `koanf:"retention-max-bytes"`
	RetentionMaxSegments int    `koanf:"retention-max-segments"`
	MaxFrameBytes        int    `koanf:"max-frame-bytes"`
	Fsync                string `koanf:"fsync"`
	FsyncIntervalMS      int    `koanf:"fsync-interval-ms"`
	DisableIOURing       bool   `koanf:"disable-io-uring"`
	DirectIO             bool   `koanf:"direct-io"`
	LeaseTimeoutMS       int    `koanf:"lease-timeout-ms"`
	FailoverTimeoutMS    int    `koanf:"failover-timeout-ms"`
	RequestTimeoutMS     int    `koanf:"request-timeout-ms"`
	RaftHeartbeatMS      int    `koanf:"raft-heartbeat-timeout-ms"`
	RaftElectionMS       int    `koanf:"raft-election-timeout-ms"`
	LogLevel             string `koanf:"log-level"`
	LogFormat            string `koanf:"log-format"`
	LogFile              string `koanf:"log-file"`

	// ignored lists the settings of the file and the environment that are
	// not flags (typos, or foreign WALRUS_* variables), and the settings of
	// the file that a WALRUS_* variable overrides (an image's environment
	// does that silently), for a warning.
	ignored []string
}

// nodeFlags declares the node's flags with their defaults.
func nodeFlags(fs *flag.FlagSet) {
	fs.String("config", "", "YAML configuration file (keys are the flag names)")
	fs.Uint64("node-id", 1, "unique node id")
	fs.Bool("node-id-from-hostname", false, "derive the node id from a StatefulSet pod's host name: <name>-<ordinal> is node ordinal+1 (not with --node-id)")
	fs.Int("bootstrap-expect", 0, "the number of nodes of a new cluster, all named by --join on every node: with no Raft state, the node with the lowest id bootstraps once they all answer that they are new; any other answer makes a node join (0: off)")
	fs.Uint64("bootstrap-node-id", 0, "with no Raft state, the node with this id bootstraps a new cluster and ignores --join; the others join (0: a node bootstraps when --join is empty)")
	fs.String("data-dir", broker.DefaultDataDir, "root data directory (the node uses <data-dir>/node_<id>)")
	fs.String("raft-host", "127.0.0.1", "address Raft and joins listen on")
	fs.Int("raft-port", broker.DefaultRaftPort, "Raft and join port")
	fs.String("raft-advertise-host", "", "host other nodes reach Raft on (default: raft-host)")
	fs.String("join", "", "Raft address host:port of any existing node to join (comma-separated for several)")
	fs.String("client-host", "127.0.0.1", "address the native protocol and NATS listen on")
	fs.Int("client-port", broker.DefaultClientPort, "native protocol port")
	fs.Int("port", 0, "alias of --client-port")
	fs.Int("nats-port", broker.DefaultNATSPort, "embedded NATS client port")
	fs.Int("nats-cluster-port", broker.DefaultNATSClusterPort, "embedded NATS route port")
	fs.String("nats-prefix", broker.DefaultNATSPrefix, "first token of the public NATS subjects (walrus.pub.<topic>, ...)")
	fs.Int("nats-max-message-bytes", broker.DefaultNATSMaxMessageBytes, "largest entry (payload plus headers) produced over NATS")
	fs.Int("nats-dedup-window-ms", int(broker.DefaultNATSDedupWindow/time.Millisecond), "how long a Nats-Msg-Id is remembered per topic, in milliseconds (0: no deduplication)")
	fs.String("nats-leafnode-url", "", "upstream NATS leafnode URL(s), comma-separated (nats-leaf://host:7422, tls://...); user:password@ allowed")
	fs.String("nats-leafnode-credentials", "", ".creds file (JWT and nkey) for the upstream leafnode account")
	fs.String("nats-client-advertise", "", "host:port NATS clients are told to reach this node at (default: the raft advertise host and --nats-port)")
	fs.Int("http-port", 0, "HTTP port for /metrics, /healthz and /readyz (0: off)")
	fs.Uint64("max-segment-entries", broker.DefaultMaxSegmentEntries, "roll a segment over at this many entries")
	fs.Int64("max-segment-bytes", broker.DefaultMaxSegmentBytes, "roll a segment over at this many bytes")
	fs.Int("monitor-check-ms", int(broker.DefaultMonitorInterval/time.Millisecond), "rollover and retention monitor period in milliseconds")
	fs.String("retention-max-age", "", "delete a topic's sealed segments this long after they were sealed, as 168h or 7d (empty: no limit)")
	fs.Int64("retention-max-bytes", 0, "delete a topic's oldest sealed segments while they hold more bytes than this (0: no limit)")
	fs.Int("retention-max-segments", 0, "keep at most this many sealed segments per topic (0: no limit)")
	fs.Int("max-frame-bytes", broker.DefaultMaxFrameBytes, "largest native protocol frame")
	fs.String("fsync", string(storage.FsyncAlways), "durability: always (ack after fdatasync), interval, never")
	fs.Int("fsync-interval-ms", int(storage.DefaultFsyncInterval/time.Millisecond), "sync period for --fsync interval")
	fs.Bool("disable-io-uring", false, "never use io_uring")
	fs.Bool("direct-io", false, "write group commits with O_DIRECT (see docs/storage.md)")
	fs.Int("lease-timeout-ms", int(broker.DefaultLeaseTimeout/time.Millisecond), "advanced: a segment leader acknowledges only within this long of quorum contact")
	fs.Int("failover-timeout-ms", int(broker.DefaultFailoverTimeout/time.Millisecond), "advanced: fail a segment over after its leader is unreachable this long (> lease)")
	fs.Int("request-timeout-ms", int(broker.DefaultRequestTimeout/time.Millisecond), "advanced: bound of one forwarded request")
	fs.Int("raft-heartbeat-timeout-ms", 0, "advanced: Raft heartbeat timeout (0: 1000)")
	fs.Int("raft-election-timeout-ms", 0, "advanced: Raft election timeout (0: 1000)")
	fs.String("log-level", "info", "debug, info, warn or error (RUST_LOG is honoured when this is not set)")
	fs.String("log-format", "text", "text or json")
	fs.String("log-file", "", "write logs to this file instead of stderr")
	fs.String("initial-peer", "", "accepted for compatibility with the original; ignored (use --join)")
}

// loadNodeConfig layers defaults < YAML file < env < flags.
func loadNodeConfig(args []string, environ []string, stderr io.Writer) (nodeConfig, error) {
	return loadConfig(args, environ, stderr, os.Hostname)
}

// loadConfig is loadNodeConfig with the host name (for
// --node-id-from-hostname) read by hostname.
func loadConfig(args, environ []string, stderr io.Writer, hostname func() (string, error)) (nodeConfig, error) {
	fs := flag.NewFlagSet("walrus", flag.ContinueOnError)
	fs.SetOutput(stderr)
	nodeFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nodeConfig{}, err
	}
	if fs.NArg() > 0 {
		return nodeConfig{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var ignored, fileKeys []string
	k := koanf.New(".")
	if path := fs.Lookup("config").Value.String(); path != "" {
		if err := k.Load(file.Provider(path), yaml.Parser()); err != nil {
			return nodeConfig{}, fmt.Errorf("config file %s: %w", path, err)
		}
		fileKeys = k.Keys()
		for _, key := range fileKeys {
			if !isSetting(key) {
				ignored = append(ignored, fmt.Sprintf("config file %s: %q is not a setting", path, key))
			}
		}
	}
	if err := k.Load(envProvider(environ), nil); err != nil {
		return nodeConfig{}, fmt.Errorf("environment: %w", err)
	}
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		switch key := envKey(name); {
		case !strings.HasPrefix(name, "WALRUS_"):
		case !isSetting(key):
			ignored = append(ignored, fmt.Sprintf("environment: %s is not a setting", name))
		case slices.Contains(fileKeys, key):
			ignored = append(ignored, fmt.Sprintf("config file %s: %q is overridden by the environment's %s",
				fs.Lookup("config").Value.String(), key, name))
		}
	}
	if v, ok := lookupEnv(environ, "WALRUS_DISABLE_IO_URING"); ok && v == "" {
		_ = k.Set("disable-io-uring", true) // the original: set to anything, even empty
	}
	levelConfigured := k.Exists("log-level") // by the file or WALRUS_LOG_LEVEL
	nodeIDGiven := k.Exists("node-id") || flagSet(fs, "node-id")
	if port := fs.Lookup("port"); port.Value.String() != "0" {
		_ = fs.Set("client-port", port.Value.String())
	}
	if err := k.Load(basicflag.Provider(fs, ".", &basicflag.Opt{KeyMap: k}), nil); err != nil {
		return nodeConfig{}, fmt.Errorf("flags: %w", err)
	}
	var c nodeConfig
	if err := k.UnmarshalWithConf("", &c, koanf.UnmarshalConf{Tag: "koanf"}); err != nil {
		return nodeConfig{}, fmt.Errorf("config: %w", err)
	}
	if !flagSet(fs, "log-level") && !levelConfigured {
		if v, ok := lookupEnv(environ, "RUST_LOG"); ok {
			c.LogLevel = rustLogLevel(v)
		}
	}
	if c.NodeIDFromHostname {
		if nodeIDGiven {
			return nodeConfig{}, errors.New("node-id and node-id-from-hostname are both given: use one of them")
		}
		host, err := hostname()
		if err != nil {
			return nodeConfig{}, fmt.Errorf("node-id-from-hostname: %w", err)
		}
		if c.NodeID, err = nodeIDFromHostname(host); err != nil {
			return nodeConfig{}, fmt.Errorf("node-id-from-hostname: %w", err)
		}
	}
	c.ignored = ignored
	return c, nil
}

// isSetting reports whether key is a setting of nodeConfig. The file and
// the environment may give only these: the flags --config and --port (the
// alias of --client-port) and the ignored --initial-peer are not settings.
func isSetting(key string) bool {
	t := reflect.TypeFor[nodeConfig]()
	for i := range t.NumField() {
		if t.Field(i).Tag.Get("koanf") == key {
			return true
		}
	}
	return false
}

// nodeIDFromHostname returns the node id of a StatefulSet pod: the ordinal
// that ends its host name ("walrus-2", or "walrus-2.walrus-headless..." for
// a fully qualified one) plus one, so that pod walrus-0 is node 1.
func nodeIDFromHostname(host string) (uint64, error) {
	name, _, _ := strings.Cut(host, ".")
	i := strings.LastIndexByte(name, '-')
	ord := name[i+1:]
	if i <= 0 || ord == "" || strings.Trim(ord, "0123456789") != "" {
		return 0, fmt.Errorf("host name %q does not end in -<ordinal> (a StatefulSet pod is named <statefulset>-<ordinal>, e.g. walrus-0)", host)
	}
	if len(ord) > 1 && ord[0] == '0' {
		return 0, fmt.Errorf("host name %q: ordinal %q has a leading zero", host, ord)
	}
	n, err := strconv.ParseUint(ord, 10, 64)
	if err != nil || n == math.MaxUint64 {
		return 0, fmt.Errorf("host name %q: ordinal %s out of range", host, ord)
	}
	return n + 1, nil
}

// envProvider maps WALRUS_FOO_BAR to the key foo-bar.
func envProvider(environ []string) *env.Env {
	return env.Provider(".", env.Opt{
		Prefix: "WALRUS_",
		TransformFunc: func(k, v string) (string, any) {
			key := envKey(k)
			if key == "disable-io-uring" {
				return key, true // the original disabled io_uring when the variable was set at all
			}
			return key, v
		},
		EnvironFunc: func() []string { return environ },
	})
}

// envKey maps the variable WALRUS_FOO_BAR to its key, foo-bar.
func envKey(name string) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(name, "WALRUS_")), "_", "-")
}

func lookupEnv(environ []string, name string) (string, bool) {
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			return v, true
		}
	}
	return "", false
}

func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// rustLogLevel maps RUST_LOG (as the original's compose files set it) to a
// level: its most verbose directive wins.
func rustLogLevel(v string) string {
	v = strings.ToLower(v)
	for _, l := range []string{"trace", "debug", "info", "warn", "error"} {
		if strings.Contains(v, l) {
			if l == "trace" {
				return "debug"
			}
			return l
		}
	}
	return "info"
}

// brokerConfig turns the layered configuration into broker.Config.
func (c nodeConfig) brokerConfig(log *slog.Logger) (broker.Config, error) {
	fsync, err := storage.ParseFsyncPolicy(c.Fsync)
	if err != nil {
		return broker.Config{}, err
	}
	maxAge, err := parseAge(c.RetentionMaxAge)
	if err != nil {
		return broker.Config{}, fmt.Errorf("retention max age: %w", err)
	}
	bc := broker.Config{
		NodeID:            c.NodeID,
		DataDir:           c.DataDir,
		RaftHost:          c.RaftHost,
		RaftPort:          c.RaftPort,
		RaftAdvertiseHost: c.RaftAdvertiseHost,
		ClientHost:        c.ClientHost,
		ClientPort:        c.ClientPort,
		NATSPort:          c.NATSPort,
		NATSClusterPort:   c.NATSClusterPort,

		NATSPrefix:              c.NATSPrefix,
		NATSMaxMessageBytes:     c.NATSMaxMsgBytes,
		NATSDedupWindow:         ms(c.NATSDedupWindowMS),
		NATSLeafnodeURLs:        splitList(c.NATSLeafnodeURL...),
		NATSLeafnodeCredentials: c.NATSLeafnodeCreds,
		NATSClientAdvertise:     c.NATSClientAdv,

		MaxSegmentEntries: max(c.MaxSegmentEntries, 1),
		MaxSegmentBytes:   c.MaxSegmentBytes,
		MonitorInterval:   time.Duration(max(c.MonitorCheckMS, 10)) * time.Millisecond,
		Retention: broker.Retention{
			MaxAge: maxAge, MaxBytes: c.RetentionMaxBytes, MaxSegments: c.RetentionMaxSegments,
		},
		MaxFrameBytes:   c.MaxFrameBytes,
		LeaseTimeout:    ms(c.LeaseTimeoutMS),
		FailoverTimeout: ms(c.FailoverTimeoutMS),
		RequestTimeout:  ms(c.RequestTimeoutMS),
		RaftTiming: broker.RaftTiming{
			HeartbeatTimeout:   ms(c.RaftHeartbeatMS),
			ElectionTimeout:    ms(c.RaftElectionMS),
			LeaderLeaseTimeout: ms(c.RaftHeartbeatMS / 2),
		},
		Storage: storage.Options{
			Fsync:         fsync,
			FsyncInterval: time.Duration(c.FsyncIntervalMS) * time.Millisecond,
			DirectIO:      c.DirectIO,
		},
		Logger: log,
	}
	// broker.Config reads zero as "the default"; here zero is what was asked.
	switch {
	case c.NATSPrefix == "":
		return broker.Config{}, errors.New("nats prefix is empty")
	case c.NATSMaxMsgBytes <= 0:
		return broker.Config{}, fmt.Errorf("nats max message bytes %d is not positive", c.NATSMaxMsgBytes)
	case c.NATSDedupWindowMS < 0:
		return broker.Config{}, fmt.Errorf("nats dedup window %dms is negative (0 disables deduplication)", c.NATSDedupWindowMS)
	case c.NATSDedupWindowMS == 0:
		bc.NATSDedupWindow = broker.DisableNATSDedup
	}
	if c.DisableIOURing {
		bc.Storage.Backend = storage.BackendPwrite
	}
	if c.HTTPPort != 0 {
		bc.HTTPAddr = net.JoinHostPort(c.ClientHost, strconv.Itoa(c.HTTPPort))
	}
	bc.Join = splitList(c.Join)
	if c.BootstrapExpect != 0 && c.BootstrapNodeID != 0 {
		return broker.Config{}, errors.New("bootstrap-expect and bootstrap-node-id are both given: use one of them")
	}
	bc.BootstrapExpect = c.BootstrapExpect // Validate checks it against the join list
	if c.BootstrapNodeID != 0 {
		if len(bc.Join) == 0 {
			return broker.Config{}, fmt.Errorf("bootstrap node id %d needs --join: without it every node bootstraps a cluster of its own", c.BootstrapNodeID)
		}
		if c.BootstrapNodeID == c.NodeID {
			// With Raft state the join list is not used anyway; without
			// it, no join list means bootstrap.
			bc.Join = nil
		}
	}
	return bc, bc.Validate()
}

// parseAge parses a retention age: a Go duration ("36h", "90m") or a whole
// number of days ("7d"); empty or zero ("0", "0s", "0d") is no limit.
func parseAge(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, nil
	}
	if days, ok := strings.CutSuffix(v, "d"); ok {
		n, err := strconv.ParseUint(days, 10, 16)
		if err != nil {
			return 0, fmt.Errorf("%q is not a whole number of days like 7d", v)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%q is not a positive duration like 168h or 7d", v)
	}
	return d, nil
}

// splitList splits comma-separated lists into their non-empty, trimmed
// elements.
func splitList(lists ...string) []string {
	var out []string
	for _, l := range lists {
		for _, e := range strings.Split(l, ",") {
			if e = strings.TrimSpace(e); e != "" {
				out = append(out, e)
			}
		}
	}
	return out
}

// newLogger builds the process logger.
func newLogger(c nodeConfig, stderr io.Writer) (*slog.Logger, io.Closer, error) {
	level, err := c.logLevel()
	if err != nil {
		return nil, nil, err
	}
	out, closer := stderr, io.Closer(nopCloser{})
	if c.LogFile != "" {
		f, err := os.OpenFile(c.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return nil, nil, fmt.Errorf("log file: %w", err)
		}
		out, closer = f, f
	}
	opts := &slog.HandlerOptions{Level: level}
	switch c.LogFormat {
	case "text":
		return slog.New(slog.NewTextHandler(out, opts)), closer, nil
	case "json":
		return slog.New(slog.NewJSONHandler(out, opts)), closer, nil
	}
	_ = closer.Close() // the format error is the one to report
	return nil, nil, errLogFormat
}

var errLogFormat = errors.New("log format must be text or json")

// logLevel parses the log level.
func (c nodeConfig) logLevel() (slog.Level, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return 0, fmt.Errorf("log level %q: %w", c.LogLevel, err)
	}
	return level, nil
}

// checkLog checks the log settings without opening the log file.
func (c nodeConfig) checkLog() error {
	if _, err := c.logLevel(); err != nil {
		return err
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return errLogFormat
	}
	return nil
}

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

type nopCloser struct{}

func (nopCloser) Close() error { return nil }
