package broker

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walrus-edge/walrus/storage"
)

// Config tests are internal: they check the defaults withDefaults fills in,
// which the exported API does not show.

func TestConfigDefaults(t *testing.T) {
	c := Config{}.withDefaults()
	checks := []struct {
		name      string
		got, want any
	}{
		{"NodeID", c.NodeID, uint64(1)},
		{"DataDir", c.DataDir, "./data"},
		{"RaftHost", c.RaftHost, "127.0.0.1"},
		{"RaftPort", c.RaftPort, 6000},
		{"RaftAdvertiseHost", c.RaftAdvertiseHost, "127.0.0.1"},
		{"ClientHost", c.ClientHost, "127.0.0.1"},
		{"ClientPort", c.ClientPort, 8080},
		{"NATSPort", c.NATSPort, 4222},
		{"NATSClusterPort", c.NATSClusterPort, 6222},
		{"HTTPAddr", c.HTTPAddr, ""},
		{"MaxFrameBytes", c.MaxFrameBytes, 65536},
		{"MaxSegmentEntries", c.MaxSegmentEntries, uint64(1_000_000)},
		{"MaxSegmentBytes", c.MaxSegmentBytes, int64(256 << 20)},
		{"MonitorInterval", c.MonitorInterval, 10 * time.Second},
		{"LeaseTimeout", c.LeaseTimeout, 2 * time.Second},
		{"FailoverTimeout", c.FailoverTimeout, 5 * time.Second},
		{"HeartbeatInterval", c.HeartbeatInterval, 500 * time.Millisecond},
		{"RequestTimeout", c.RequestTimeout, 5 * time.Second},
		{"NATSPrefix", c.NATSPrefix, "walrus"},
		{"NATSMaxMessageBytes", c.NATSMaxMessageBytes, 1 << 20},
		{"NATSDedupWindow", c.NATSDedupWindow, 2 * time.Minute},
		{"NATSLeafnodeCredentials", c.NATSLeafnodeCredentials, ""},
		{"raftAddr", c.raftAddr(), "127.0.0.1:6000"},
		{"raftAdvertise", c.raftAdvertise(), "127.0.0.1:6000"},
		{"clientAddr", c.clientAddr(), "127.0.0.1:8080"},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
	if c.Logger == nil {
		t.Error("Logger is nil, want a discarding logger")
	}
	if err := (Config{}).Validate(); err != nil {
		t.Errorf("the zero Config is invalid: %v", err)
	}

	// A wildcard Raft host is advertised as loopback; an explicit advertise
	// host is kept.
	if got := (Config{RaftHost: "0.0.0.0"}).withDefaults().RaftAdvertiseHost; got != "127.0.0.1" {
		t.Errorf("RaftHost 0.0.0.0: advertise host %q, want 127.0.0.1", got)
	}
	if got := (Config{RaftHost: "::"}).withDefaults().RaftAdvertiseHost; got != "127.0.0.1" {
		t.Errorf("RaftHost ::: advertise host %q, want 127.0.0.1", got)
	}
	adv := Config{RaftHost: "0.0.0.0", RaftAdvertiseHost: "10.0.0.7"}.withDefaults()
	if got := adv.raftAdvertise(); got != "10.0.0.7:6000" {
		t.Errorf("explicit advertise host: %q, want 10.0.0.7:6000", got)
	}
	// withDefaults never overrides a set value.
	set := Config{NodeID: 3, DataDir: "/x", RaftPort: 1, ClientPort: 2, NATSPort: 3, NATSClusterPort: 4}.withDefaults()
	if set.NodeID != 3 || set.DataDir != "/x" || set.RaftPort != 1 || set.ClientPort != 2 || set.NATSPort != 3 || set.NATSClusterPort != 4 {
		t.Errorf("withDefaults changed set fields: %+v", set)
	}
}

// New validates, applies the defaults and starts nothing: no directory.
func TestNewZeroConfigStartsNothing(t *testing.T) {
	t.Chdir(t.TempDir())
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if s.NodeID() != 1 {
		t.Errorf("NodeID() = %d, want 1", s.NodeID())
	}
	if s.dir != "data/node_1" {
		t.Errorf("node directory %q, want data/node_1", s.dir)
	}
	if _, err := os.Stat("data"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("New created ./data (stat: %v)", err)
	}
	// Shutdown of a node that never started is a no-op.
	if err := s.Shutdown(t.Context()); err != nil {
		t.Errorf("Shutdown before Start: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	creds := filepath.Join(t.TempDir(), "edge.creds")
	if err := os.WriteFile(creds, []byte("creds"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		cfg  Config
		want string // substring of the error; "" means valid
	}{
		{"zero", Config{}, ""},
		{"all ports set", Config{RaftPort: 1, ClientPort: 65535, NATSPort: 4223, NATSClusterPort: 6223}, ""},
		{"raft port negative", Config{RaftPort: -1}, "raft port -1 out of range"},
		{"raft port too big", Config{RaftPort: 65536}, "raft port 65536 out of range"},
		{"client port too big", Config{ClientPort: 70000}, "client port 70000 out of range"},
		{"nats port negative", Config{NATSPort: -4222}, "nats port -4222 out of range"},
		{"nats cluster port too big", Config{NATSClusterPort: 1 << 20}, "nats cluster port 1048576 out of range"},
		{"wildcard raft host is fine", Config{RaftHost: "0.0.0.0"}, ""},
		{"wildcard advertise host v4", Config{RaftAdvertiseHost: "0.0.0.0"}, "raft advertise host 0.0.0.0 is a wildcard address"},
		{"wildcard advertise host v6", Config{RaftAdvertiseHost: "::"}, "raft advertise host :: is a wildcard address"},
		{"advertise hostname", Config{RaftAdvertiseHost: "node1.internal"}, ""},
		{"join ok", Config{Join: []string{"127.0.0.1:6000", "node2:6000", "[::1]:6000"}}, ""},
		{"join without port", Config{Join: []string{"127.0.0.1"}}, `join address "127.0.0.1"`},
		{"join second bad", Config{Join: []string{"a:1", "a:1:2"}}, `join address "a:1:2"`},
		{"join empty", Config{Join: []string{""}}, `join address ""`},
		{"frame too small", Config{MaxFrameBytes: 63}, "max frame bytes 63 is too small"},
		{"frame negative", Config{MaxFrameBytes: -1}, "max frame bytes -1 is too small"},
		{"frame 64", Config{MaxFrameBytes: 64}, ""},
		{"monitor too fast", Config{MonitorInterval: 9 * time.Millisecond}, "monitor interval 9ms is below 10ms"},
		{"monitor 10ms", Config{MonitorInterval: 10 * time.Millisecond}, ""},
		{"failover equals lease", Config{LeaseTimeout: time.Second, FailoverTimeout: time.Second}, "failover timeout 1s must exceed the lease timeout 1s"},
		{"failover below lease", Config{LeaseTimeout: 3 * time.Second, FailoverTimeout: 2 * time.Second}, "must exceed the lease timeout"},
		{"failover below default lease", Config{FailoverTimeout: time.Second}, "failover timeout 1s must exceed the lease timeout 2s"},
		{"lease above default failover", Config{LeaseTimeout: 6 * time.Second}, "failover timeout 5s must exceed the lease timeout 6s"},
		{"failover just above lease", Config{LeaseTimeout: time.Second, FailoverTimeout: time.Second + time.Millisecond}, ""},
		{"negative lease", Config{LeaseTimeout: -time.Second}, "lease timeout"},
		{"negative heartbeat", Config{HeartbeatInterval: -time.Millisecond}, "heartbeat interval"},
		{"negative request timeout", Config{RequestTimeout: -time.Second}, "request timeout"},
		{"negative segment bytes", Config{MaxSegmentBytes: -1}, "max segment bytes"},
		{"fsync policy", Config{Storage: storage.Options{Fsync: "sometimes"}}, `fsync policy "sometimes"`},
		{"fsync interval negative", Config{Storage: storage.Options{Fsync: storage.FsyncInterval, FsyncInterval: -time.Millisecond}}, "FsyncInterval"},
		{"entry bytes too small", Config{Storage: storage.Options{MaxEntryBytes: 1}}, "MaxEntryBytes 1"},
		{"storage ok", Config{Storage: storage.Options{Fsync: storage.FsyncNever, PreallocBytes: -1}}, ""},
		{"nats prefix", Config{NATSPrefix: "site-1_a"}, ""},
		{"nats prefix dot", Config{NATSPrefix: "site1.walrus"}, `nats prefix "site1.walrus": must be one subject token`},
		{"nats prefix star", Config{NATSPrefix: "*"}, "must be one subject token"},
		{"nats prefix gt", Config{NATSPrefix: "a>"}, "must be one subject token"},
		{"nats prefix space", Config{NATSPrefix: "a b"}, "must be one subject token"},
		{"nats prefix tab", Config{NATSPrefix: "a\tb"}, "must be one subject token"},
		{"nats prefix underscore", Config{NATSPrefix: "_WALRUS"}, "must not start with '_' or '$'"},
		{"nats prefix dollar", Config{NATSPrefix: "$SYS"}, "must not start with '_' or '$'"},
		{"nats max message max", Config{NATSMaxMessageBytes: MaxNATSMessageBytes}, ""},
		{"nats max message too big", Config{NATSMaxMessageBytes: MaxNATSMessageBytes + 1}, "nats max message bytes 8323073 out of range (1 to 8323072)"},
		{"nats max message negative", Config{NATSMaxMessageBytes: -1}, "nats max message bytes -1 out of range"},
		{"nats dedup disabled", Config{NATSDedupWindow: DisableNATSDedup}, ""},
		{"leafnode ok", Config{NATSLeafnodeURLs: []string{"nats-leaf://u:p@core:7422", "nats-leaf://core2:7422"}}, ""},
		{"leafnode tls", Config{NATSLeafnodeURLs: []string{"tls://core:7422"}}, ""},
		{"leafnode scheme", Config{NATSLeafnodeURLs: []string{"http://core:7422"}}, `nats leafnode URL "http://core:7422": scheme must be one of`},
		{"leafnode no port", Config{NATSLeafnodeURLs: []string{"nats-leaf://core"}}, "want nats-leaf://host:port"},
		{"leafnode bare host", Config{NATSLeafnodeURLs: []string{"core:7422"}}, "scheme must be one of"},
		{"leafnode mixed", Config{NATSLeafnodeURLs: []string{"ws://a:80", "nats-leaf://b:7422"}}, "websocket and non-websocket"},
		{"leafnode password hidden", Config{NATSLeafnodeURLs: []string{"http://u:secret@core:7422"}}, `"http://u:xxxxx@core:7422"`},
		{"leafnode credentials without url", Config{NATSLeafnodeCredentials: "/x.creds"}, "credentials given without a leafnode URL"},
		{"leafnode credentials missing", Config{NATSLeafnodeURLs: []string{"nats-leaf://core:7422"}, NATSLeafnodeCredentials: "/nonexistent/edge.creds"},
			"nats leafnode credentials: stat /nonexistent/edge.creds: no such file or directory"},
		{"leafnode credentials", Config{NATSLeafnodeURLs: []string{"nats-leaf://core:7422"}, NATSLeafnodeCredentials: creds}, ""},
		{"leafnode credentials dir", Config{NATSLeafnodeURLs: []string{"nats-leaf://core:7422"}, NATSLeafnodeCredentials: os.TempDir()}, "not a regular file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v, want valid", err)
				}
				if _, err := New(tc.cfg); err != nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate: nil, want an error containing %q", tc.want)
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("Validate: %v does not wrap ErrInvalidConfig", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate: %q, want it to contain %q", err, tc.want)
			}
			if tc.cfg.Storage != (storage.Options{}) && !errors.Is(err, storage.ErrInvalidOptions) {
				t.Errorf("Validate: %v does not wrap storage.ErrInvalidOptions", err)
			}
			if _, nerr := New(tc.cfg); nerr == nil {
				t.Errorf("New accepted the invalid config")
			}
		})
	}
}
