package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
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
	NodeID            uint64 `koanf:"node-id"`
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

	HTTPPort          int    `koanf:"http-port"`
	MaxSegmentEntries uint64 `koanf:"max-segment-entries"`
	MaxSegmentBytes   int64  `koanf:"max-segment-bytes"`
	MonitorCheckMS    int    `koanf:"monitor-check-ms"`
	MaxFrameBytes     int    `koanf:"max-frame-bytes"`
	Fsync             string `koanf:"fsync"`
	FsyncIntervalMS   int    `koanf:"fsync-interval-ms"`
	DisableIOURing    bool   `koanf:"disable-io-uring"`
	DirectIO          bool   `koanf:"direct-io"`
	LeaseTimeoutMS    int    `koanf:"lease-timeout-ms"`
	FailoverTimeoutMS int    `koanf:"failover-timeout-ms"`
	RequestTimeoutMS  int    `koanf:"request-timeout-ms"`
	RaftHeartbeatMS   int    `koanf:"raft-heartbeat-timeout-ms"`
	RaftElectionMS    int    `koanf:"raft-election-timeout-ms"`
	LogLevel          string `koanf:"log-level"`
	LogFormat         string `koanf:"log-format"`
	LogFile           string `koanf:"log-file"`
}

// nodeFlags declares the node's flags with their defaults.
func nodeFlags(fs *flag.FlagSet) {
	fs.String("config", "", "YAML configuration file (keys are the flag names)")
	fs.Uint64("node-id", 1, "unique node id")
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
	fs.Int("http-port", 0, "HTTP port for /metrics, /healthz and /readyz (0: off)")
	fs.Uint64("max-segment-entries", broker.DefaultMaxSegmentEntries, "roll a segment over at this many entries")
	fs.Int64("max-segment-bytes", broker.DefaultMaxSegmentBytes, "roll a segment over at this many bytes")
	fs.Int("monitor-check-ms", int(broker.DefaultMonitorInterval/time.Millisecond), "rollover monitor period in milliseconds")
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
	fs := flag.NewFlagSet("walrus", flag.ContinueOnError)
	fs.SetOutput(stderr)
	nodeFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nodeConfig{}, err
	}
	if fs.NArg() > 0 {
		return nodeConfig{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	k := koanf.New(".")
	if path := fs.Lookup("config").Value.String(); path != "" {
		if err := k.Load(file.Provider(path), yaml.Parser()); err != nil {
			return nodeConfig{}, fmt.Errorf("config file %s: %w", path, err)
		}
	}
	if err := k.Load(envProvider(environ), nil); err != nil {
		return nodeConfig{}, fmt.Errorf("environment: %w", err)
	}
	if v, ok := lookupEnv(environ, "WALRUS_DISABLE_IO_URING"); ok && v == "" {
		_ = k.Set("disable-io-uring", true) // the original: set to anything, even empty
	}
	levelConfigured := k.Exists("log-level") // by the file or WALRUS_LOG_LEVEL
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
	return c, nil
}

// envProvider maps WALRUS_FOO_BAR to the key foo-bar.
func envProvider(environ []string) *env.Env {
	return env.Provider(".", env.Opt{
		Prefix: "WALRUS_",
		TransformFunc: func(k, v string) (string, any) {
			key := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(k, "WALRUS_")), "_", "-")
			if key == "disable-io-uring" {
				return key, true // the original disabled io_uring when the variable was set at all
			}
			return key, v
		},
		EnvironFunc: func() []string { return environ },
	})
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

		MaxSegmentEntries: max(c.MaxSegmentEntries, 1),
		MaxSegmentBytes:   c.MaxSegmentBytes,
		MonitorInterval:   time.Duration(max(c.MonitorCheckMS, 10)) * time.Millisecond,
		MaxFrameBytes:     c.MaxFrameBytes,
		LeaseTimeout:      ms(c.LeaseTimeoutMS),
		FailoverTimeout:   ms(c.FailoverTimeoutMS),
		RequestTimeout:    ms(c.RequestTimeoutMS),
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
	return bc, bc.Validate()
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
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return nil, nil, fmt.Errorf("log level %q: %w", c.LogLevel, err)
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
	return nil, nil, errors.New("log format must be text or json")
}

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

type nopCloser struct{}

func (nopCloser) Close() error { return nil }
