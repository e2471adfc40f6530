package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walrus-edge/walrus/broker"
	"github.com/walrus-edge/walrus/storage"
	"github.com/walrus-edge/walrus/tests/freeport"
)

func load(t *testing.T, args []string, environ ...string) nodeConfig {
	t.Helper()
	c, err := loadNodeConfig(args, environ, &bytes.Buffer{})
	if err != nil {
		t.Fatalf("loadNodeConfig(%q, %q): %v", args, environ, err)
	}
	return c
}

// The original's flags, and its defaults.
func TestConfig_OriginalFlagsAndDefaults(t *testing.T) {
	c := load(t, nil)
	if c.NodeID != 1 || c.DataDir != "./data" || c.RaftPort != 6000 || c.ClientPort != 8080 ||
		c.RaftHost != "127.0.0.1" || c.ClientHost != "127.0.0.1" || c.MaxSegmentEntries != 1_000_000 ||
		c.MonitorCheckMS != 10000 || c.Fsync != "always" {
		t.Fatalf("defaults = %+v", c)
	}
	c = load(t, []string{"--node-id", "2", "--data-dir", "/data", "--raft-port", "6002", "--raft-host", "0.0.0.0",
		"--raft-advertise-host", "node2", "--client-port", "9092", "--client-host", "0.0.0.0", "--join", "node1:6001"})
	if c.NodeID != 2 || c.DataDir != "/data" || c.RaftPort != 6002 || c.RaftHost != "0.0.0.0" ||
		c.RaftAdvertiseHost != "node2" || c.ClientPort != 9092 || c.ClientHost != "0.0.0.0" || c.Join != "node1:6001" {
		t.Fatalf("original flags = %+v", c)
	}
	// --port is the original's alias of --client-port.
	if c := load(t, []string{"--port", "9999"}); c.ClientPort != 9999 {
		t.Fatalf("--port: client port %d", c.ClientPort)
	}
}

// Defaults < YAML file < environment < flags.
func TestConfig_Layering(t *testing.T) {
	file := filepath.Join(t.TempDir(), "walrus.yaml")
	yaml := "node-id: 3\nclient-port: 7001\nraft-port: 7002\nmax-segment-entries: 50\nfsync: interval\n"
	if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	c := load(t, []string{"--config", file})
	if c.NodeID != 3 || c.ClientPort != 7001 || c.RaftPort != 7002 || c.MaxSegmentEntries != 50 || c.Fsync != "interval" {
		t.Fatalf("file = %+v", c)
	}
	c = load(t, []string{"--config", file}, "WALRUS_CLIENT_PORT=7101", "WALRUS_MAX_SEGMENT_ENTRIES=10", "WALRUS_MONITOR_CHECK_MS=200")
	if c.NodeID != 3 || c.ClientPort != 7101 || c.MaxSegmentEntries != 10 || c.MonitorCheckMS != 200 {
		t.Fatalf("env over file = %+v", c)
	}
	c = load(t, []string{"--config", file, "--client-port", "7201"}, "WALRUS_CLIENT_PORT=7101")
	if c.ClientPort != 7201 || c.RaftPort != 7002 {
		t.Fatalf("flags over env = %+v", c)
	}
}

// WALRUS_DISABLE_IO_URING disables io_uring when set to anything, as in the
// original; RUST_LOG sets the level unless --log-level does.
func TestConfig_OriginalEnvironment(t *testing.T) {
	for _, v := range []string{"", "1", "true", "yes"} {
		c := load(t, nil, "WALRUS_DISABLE_IO_URING="+v)
		if !c.DisableIOURing {
			t.Fatalf("WALRUS_DISABLE_IO_URING=%q did not disable io_uring", v)
		}
		bc, err := c.brokerConfig(nil)
		if err != nil || bc.Storage.Backend != storage.BackendPwrite {
			t.Fatalf("backend = %q, %v", bc.Storage.Backend, err)
		}
	}
	if c := load(t, nil, "RUST_LOG=debug"); c.LogLevel != "debug" {
		t.Fatalf("RUST_LOG=debug → level %q", c.LogLevel)
	}
	if c := load(t, nil, "RUST_LOG=distributed_walrus=warn"); c.LogLevel != "warn" {
		t.Fatalf("RUST_LOG=...=warn → level %q", c.LogLevel)
	}
	if c := load(t, []string{"--log-level", "error"}, "RUST_LOG=debug"); c.LogLevel != "error" {
		t.Fatalf("--log-level over RUST_LOG → %q", c.LogLevel)
	}
}

// Bad input gets a clear error and a usage exit code, never a start.
func TestConfig_BadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  []string
		want string
	}{
		{args: []string{"--no-such-flag"}, want: "flag provided but not defined"},
		{args: []string{"--raft-port", "x"}, want: "invalid value"},
		{args: []string{"extra"}, want: "unexpected argument"},
		{args: []string{"--config", "/nonexistent.yaml"}, want: "config file"},
		{args: []string{"--fsync", "sometimes"}, want: "fsync policy"},
		{args: []string{"--raft-port", "70000"}, want: "out of range"},
		{args: []string{"--join", "no-port"}, want: "join address"},
		{args: []string{"--raft-host", "0.0.0.0", "--raft-advertise-host", "0.0.0.0"}, want: "wildcard"},
		{args: []string{"--log-level", "loud"}, want: "log level"},
		{env: []string{"WALRUS_CLIENT_PORT=abc"}, want: "config"},
		{args: []string{"--nats-prefix", "site1.walrus"}, want: `nats prefix "site1.walrus": must be one subject token`},
		{args: []string{"--nats-prefix", "_WALRUS"}, want: "must not start with '_' or '$'"},
		{args: []string{"--nats-prefix", ""}, want: "nats prefix is empty"},
		{args: []string{"--nats-max-message-bytes", "0"}, want: "nats max message bytes 0 is not positive"},
		{args: []string{"--nats-max-message-bytes", "9000000"}, want: "nats max message bytes 9000000 out of range"},
		{args: []string{"--nats-dedup-window-ms", "-1"}, want: "nats dedup window -1ms is negative"},
		{env: []string{"WALRUS_NATS_DEDUP_WINDOW_MS=2m"}, want: "config"},
		{args: []string{"--nats-leafnode-url", "http://core:7422"}, want: `nats leafnode URL "http://core:7422": scheme must be one of`},
		{env: []string{"WALRUS_NATS_LEAFNODE_URL=nats-leaf://core"}, want: "want nats-leaf://host:port"},
		{args: []string{"--nats-leafnode-credentials", "/x.creds"}, want: "credentials given without a leafnode URL"},
		{args: []string{"--retention-max-age", "7 days"}, want: `retention max age: "7 days" is not a positive duration`},
		{env: []string{"WALRUS_RETENTION_MAX_AGE=1.5d"}, want: `"1.5d" is not a whole number of days`},
		{args: []string{"--retention-max-age", "-1h"}, want: "is not a positive duration"},
		{args: []string{"--retention-max-bytes", "-1"}, want: "a limit is negative"},
		{args: []string{"--nats-leafnode-url", "nats-leaf://core:7422", "--nats-leafnode-credentials", "/nonexistent/edge.creds"},
			want: "nats leafnode credentials: stat /nonexistent/edge.creds"},
	} {
		var stderr bytes.Buffer
		code := runNodeWith(context.Background(), tc.args, tc.env, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("args %q env %q: exit %d, stderr %q; want exit 2 mentioning %q", tc.args, tc.env, code, stderr.String(), tc.want)
		}
	}
}

// Retention: off by default; flags, environment and the file set it, ages
// as Go durations or days.
func TestConfig_Retention(t *testing.T) {
	bc, err := load(t, nil).brokerConfig(nil)
	if err != nil || bc.Retention != (broker.Retention{}) {
		t.Fatalf("default retention %+v (%v), want none", bc.Retention, err)
	}
	file := filepath.Join(t.TempDir(), "walrus.yaml")
	if err := os.WriteFile(file, []byte("retention-max-segments: 10\nretention-max-age: 36h\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		env  []string
		want broker.Retention
	}{
		{args: []string{"--retention-max-age", "7d"}, want: broker.Retention{MaxAge: 7 * 24 * time.Hour}},
		{args: []string{"--retention-max-age", "90m", "--retention-max-bytes", "1000000"},
			want: broker.Retention{MaxAge: 90 * time.Minute, MaxBytes: 1000000}},
		{env: []string{"WALRUS_RETENTION_MAX_AGE=0", "WALRUS_RETENTION_MAX_SEGMENTS=3"}, want: broker.Retention{MaxSegments: 3}},
		{args: []string{"--retention-max-age", "0d"}},
		{args: []string{"--retention-max-age", "0s"}},
		{args: []string{"--config", file}, env: []string{"WALRUS_RETENTION_MAX_BYTES=5"},
			want: broker.Retention{MaxAge: 36 * time.Hour, MaxBytes: 5, MaxSegments: 10}},
	} {
		bc, err := load(t, tc.args, tc.env...).brokerConfig(nil)
		if err != nil || bc.Retention != tc.want {
			t.Errorf("args %q env %q: retention %+v (%v), want %+v", tc.args, tc.env, bc.Retention, err, tc.want)
		}
	}
}

// The NATS API and leafnode settings: defaults, flags, environment and the
// YAML file (which may give the leafnode URLs as a list).
func TestConfig_NATS(t *testing.T) {
	bc, err := load(t, nil).brokerConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	if bc.NATSPrefix != "walrus" || bc.NATSMaxMessageBytes != 1<<20 || bc.NATSDedupWindow != 2*time.Minute ||
		bc.NATSLeafnodeURLs != nil || bc.NATSLeafnodeCredentials != "" {
		t.Fatalf("defaults: %+v", bc)
	}

	creds := filepath.Join(t.TempDir(), "edge.creds")
	if err := os.WriteFile(creds, []byte("creds"), 0o600); err != nil {
		t.Fatal(err)
	}
	want := []string{"nats-leaf://u:p@core1:7422", "nats-leaf://core2:7422"}
	check := func(name string, c nodeConfig, prefix string, maxBytes int, dedup time.Duration) {
		t.Helper()
		bc, err := c.brokerConfig(nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if bc.NATSPrefix != prefix || bc.NATSMaxMessageBytes != maxBytes || bc.NATSDedupWindow != dedup ||
			!slices.Equal(bc.NATSLeafnodeURLs, want) || bc.NATSLeafnodeCredentials != creds {
			t.Fatalf("%s: prefix %q, max %d, dedup %v, leafnodes %q, credentials %q", name, bc.NATSPrefix,
				bc.NATSMaxMessageBytes, bc.NATSDedupWindow, bc.NATSLeafnodeURLs, bc.NATSLeafnodeCredentials)
		}
	}
	check("flags", load(t, []string{"--nats-prefix", "site1", "--nats-max-message-bytes", "4096",
		"--nats-dedup-window-ms", "0", "--nats-leafnode-url", " nats-leaf://u:p@core1:7422 , nats-leaf://core2:7422",
		"--nats-leafnode-credentials", creds}), "site1", 4096, broker.DisableNATSDedup)
	check("env", load(t, nil, "WALRUS_NATS_PREFIX=site2", "WALRUS_NATS_MAX_MESSAGE_BYTES=8192",
		"WALRUS_NATS_DEDUP_WINDOW_MS=5000", "WALRUS_NATS_LEAFNODE_URL=nats-leaf://u:p@core1:7422,nats-leaf://core2:7422",
		"WALRUS_NATS_LEAFNODE_CREDENTIALS="+creds), "site2", 8192, 5*time.Second)

	for i, urls := range []string{
		"[nats-leaf://u:p@core1:7422, nats-leaf://core2:7422]",
		`"nats-leaf://u:p@core1:7422,nats-leaf://core2:7422"`,
	} {
		file := filepath.Join(t.TempDir(), "walrus.yaml")
		yaml := "nats-prefix: site3\nnats-max-message-bytes: 100\nnats-dedup-window-ms: 1\n" +
			"nats-leafnode-url: " + urls + "\nnats-leafnode-credentials: " + creds + "\n"
		if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		check(fmt.Sprintf("file %d", i), load(t, []string{"--config", file}), "site3", 100, time.Millisecond)
		// A flag overrides the file's list.
		c := load(t, []string{"--config", file, "--nats-leafnode-url", "tls://core9:7422"})
		if !slices.Equal(c.NATSLeafnodeURL, []string{"tls://core9:7422"}) {
			t.Fatalf("flag over file: %q", c.NATSLeafnodeURL)
		}
	}
}

func TestRun_Dispatch(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"version"}, &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "walrus ") {
		t.Fatalf("version: %d %q", code, out.String())
	}
	if code := run(context.Background(), []string{"frobnicate"}, &out, &errOut); code != 2 {
		t.Fatalf("unknown command exit %d", code)
	}
	if code := run(context.Background(), []string{"bench", "disk"}, &out, &errOut); code != 2 {
		t.Fatalf("bench without 'storage' exit %d", code)
	}
}

// A node started by run() serves and shuts down cleanly when its context
// ends (SIGINT/SIGTERM in main).
func TestRun_NodeStartsAndStops(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var ports []string
	for _, p := range freeport.Get(t, 4) {
		ports = append(ports, strconv.Itoa(p))
	}
	args := []string{"--data-dir", dir, "--raft-port", ports[0], "--client-port", ports[1],
		"--nats-port", ports[2], "--nats-cluster-port", ports[3], "--log-level", "error"}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan int, 1)
	var stderr bytes.Buffer
	go func() { done <- runNodeWith(runCtx, args, nil, &stderr) }()
	waitTCP(t, ctx, "127.0.0.1:"+ports[1])
	stop()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
	case <-ctx.Done():
		t.Fatal("the node did not stop")
	}
	if _, err := os.Stat(filepath.Join(dir, "node_1", "node.json")); err != nil {
		t.Fatalf("node directory: %v", err)
	}
}

func hostnameIs(name string) func() (string, error) {
	return func() (string, error) { return name, nil }
}

// A StatefulSet pod's host name ends in its ordinal: walrus-0 is node 1.
func TestNodeIDFromHostname(t *testing.T) {
	for host, want := range map[string]uint64{
		"walrus-0":            1,
		"walrus-2":            3,
		"walrus-10":           11,
		"my-release-walrus-4": 5,
		"walrus-2.walrus-headless.ns.svc.cluster.local":   3,
		"w-18446744073709551614":                          18446744073709551615,
		"edge-site-1-walrus-0.walrus.default.svc.cluster": 1,
	} {
		if got, err := nodeIDFromHostname(host); err != nil || got != want {
			t.Errorf("nodeIDFromHostname(%q) = %d, %v; want %d", host, got, err, want)
		}
	}
	for host, want := range map[string]string{
		"":                       "does not end in -<ordinal>",
		"walrus":                 `host name "walrus" does not end in -<ordinal>`,
		"walrus-":                "does not end in -<ordinal>",
		"-3":                     "does not end in -<ordinal>",
		"walrus-a":               "does not end in -<ordinal>",
		"walrus-1a":              "does not end in -<ordinal>",
		"walrus-+1":              "does not end in -<ordinal>",
		"walrus.ns-2":            "does not end in -<ordinal>", // the ordinal is in the first label
		"walrus-01":              "leading zero",
		"w-18446744073709551615": "out of range", // ordinal+1 would wrap to 0
		"w-99999999999999999999": "out of range",
	} {
		if got, err := nodeIDFromHostname(host); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("nodeIDFromHostname(%q) = %d, %v; want an error mentioning %q", host, got, err, want)
		}
	}
}

// --node-id-from-hostname (flag, WALRUS_NODE_ID_FROM_HOSTNAME or the file)
// sets the node id from the host name, and refuses an explicit node id from
// any layer; --node-id keeps the original's meaning.
func TestConfig_NodeIDFromHostname(t *testing.T) {
	file := filepath.Join(t.TempDir(), "walrus.yaml")
	if err := os.WriteFile(file, []byte("node-id-from-hostname: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	idFile := filepath.Join(t.TempDir(), "walrus.yaml")
	if err := os.WriteFile(idFile, []byte("node-id: 7\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	loadAs := func(host string, args []string, environ ...string) (nodeConfig, error) {
		return loadConfig(args, environ, &bytes.Buffer{}, hostnameIs(host))
	}
	for _, tc := range []struct {
		name string
		args []string
		env  []string
	}{
		{"flag", []string{"--node-id-from-hostname"}, nil},
		{"env", nil, []string{"WALRUS_NODE_ID_FROM_HOSTNAME=true"}},
		{"file", []string{"--config", file}, nil},
	} {
		c, err := loadAs("walrus-2", tc.args, tc.env...)
		if err != nil || c.NodeID != 3 {
			t.Errorf("%s: node id %d, %v; want 3", tc.name, c.NodeID, err)
		}
	}
	// Off: the original's --node-id, default 1.
	if c, err := loadAs("walrus-2", []string{"--node-id", "5"}); err != nil || c.NodeID != 5 {
		t.Errorf("--node-id 5: node id %d, %v", c.NodeID, err)
	}
	if c, err := loadAs("walrus-2", nil, "WALRUS_NODE_ID_FROM_HOSTNAME=false", "WALRUS_NODE_ID=4"); err != nil || c.NodeID != 4 {
		t.Errorf("from-hostname false, WALRUS_NODE_ID=4: node id %d, %v", c.NodeID, err)
	}
	if c, err := loadAs("walrus-2", nil); err != nil || c.NodeID != 1 {
		t.Errorf("default: node id %d, %v", c.NodeID, err)
	}

	for _, tc := range []struct {
		name string
		args []string
		env  []string
	}{
		{"flags", []string{"--node-id", "1", "--node-id-from-hostname"}, nil},
		{"flag and env", []string{"--node-id-from-hostname"}, []string{"WALRUS_NODE_ID=2"}},
		{"env and flag", []string{"--node-id", "2"}, []string{"WALRUS_NODE_ID_FROM_HOSTNAME=1"}},
		{"file and flag", []string{"--config", idFile, "--node-id-from-hostname"}, nil},
		{"flag and file", []string{"--config", file, "--node-id", "3"}, nil},
	} {
		_, err := loadAs("walrus-2", tc.args, tc.env...)
		if err == nil || !strings.Contains(err.Error(), "node-id and node-id-from-hostname are both given") {
			t.Errorf("%s: %v; want a refusal", tc.name, err)
		}
		var stderr bytes.Buffer
		if code := runNodeWith(context.Background(), tc.args, tc.env, &stderr); code != 2 ||
			!strings.Contains(stderr.String(), "both given") {
			t.Errorf("%s: run exit %d, %q; want exit 2", tc.name, code, stderr.String())
		}
	}

	_, err := loadAs("walrus", []string{"--node-id-from-hostname"})
	if err == nil || !strings.Contains(err.Error(), `node-id-from-hostname: host name "walrus" does not end in -<ordinal>`) {
		t.Errorf("host name without an ordinal: %v", err)
	}
	_, err = loadConfig([]string{"--node-id-from-hostname"}, nil, &bytes.Buffer{}, func() (string, error) {
		return "", os.ErrPermission
	})
	if err == nil || !strings.Contains(err.Error(), "node-id-from-hostname: permission denied") {
		t.Errorf("host name error: %v", err)
	}
}

// --bootstrap-node-id: the named node bootstraps (it drops --join, which a
// node with Raft state ignores anyway); the others join; it needs --join.
// --bootstrap-expect reaches the broker with the whole join list, needs
// one, and excludes --bootstrap-node-id.
func TestConfig_BootstrapExpect(t *testing.T) {
	join := "walrus-0.h:6000,walrus-1.h:6000,walrus-2.h:6000"
	bc, err := load(t, []string{"--join", join}, "WALRUS_BOOTSTRAP_EXPECT=3").brokerConfig(nil)
	if err != nil || bc.BootstrapExpect != 3 || len(bc.Join) != 3 {
		t.Fatalf("bootstrap expect %d, join %q, %v; want 3 and the whole list", bc.BootstrapExpect, bc.Join, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--bootstrap-expect", "3"}, "bootstrap expect 3: the join list names 0 distinct addresses"},
		{[]string{"--bootstrap-expect", "3", "--join", join + ",walrus-3.h:6000,walrus-4.h:6000"}, "names 5 distinct addresses; it must name every node"},
		{[]string{"--bootstrap-expect", "3", "--bootstrap-node-id", "1", "--join", join}, "bootstrap-expect and bootstrap-node-id are both given"},
		{[]string{"--bootstrap-expect", "-1", "--join", join}, "bootstrap expect -1: give 0 (off) or the number of nodes"},
		{[]string{"--bootstrap-expect", "1", "--join", join}, "bootstrap expect 1: give 0 (off)"},
	} {
		var stderr bytes.Buffer
		if code := runNodeWith(context.Background(), tc.args, nil, &stderr); code != 2 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%q: exit %d, %q; want exit 2 mentioning %q", tc.args, code, stderr.String(), tc.want)
		}
	}
}

func TestConfig_BootstrapNodeID(t *testing.T) {
	join := "walrus-0.h:6000,walrus-1.h:6000,walrus-2.h:6000"
	for host, wantJoin := range map[string][]string{
		"walrus-0": nil,
		"walrus-1": {"walrus-0.h:6000", "walrus-1.h:6000", "walrus-2.h:6000"},
	} {
		c, err := loadConfig([]string{"--node-id-from-hostname", "--join", join}, []string{"WALRUS_BOOTSTRAP_NODE_ID=1"},
			&bytes.Buffer{}, hostnameIs(host))
		if err != nil {
			t.Fatal(err)
		}
		bc, err := c.brokerConfig(nil)
		if err != nil || !slices.Equal(bc.Join, wantJoin) {
			t.Errorf("%s: join %q, %v; want %q", host, bc.Join, err, wantJoin)
		}
	}
	// Without it, the original's rule: the join list is used as given.
	bc, err := load(t, []string{"--join", join}).brokerConfig(nil)
	if err != nil || len(bc.Join) != 3 {
		t.Errorf("no bootstrap node: join %q, %v", bc.Join, err)
	}
	var stderr bytes.Buffer
	if code := runNodeWith(context.Background(), []string{"--bootstrap-node-id", "1"}, nil, &stderr); code != 2 ||
		!strings.Contains(stderr.String(), "bootstrap node id 1 needs --join") {
		t.Errorf("bootstrap node without --join: exit %d, %q", code, stderr.String())
	}
}

// Settings of the file and WALRUS_* variables that are not flags are
// reported, not silently dropped, and so are settings of the file that the
// environment overrides.
func TestConfig_IgnoredSettings(t *testing.T) {
	file := filepath.Join(t.TempDir(), "walrus.yaml")
	if err := os.WriteFile(file, []byte("fsnyc: never\nnats:\n  port: 1\nfsync: never\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// WALRUS_PORT and WALRUS_SERVICE_HOST: what Kubernetes service links
	// make of a Service named walrus.
	c := load(t, []string{"--config", file}, "WALRUS_SERVICE_HOST=10.0.0.1", "WALRUS_FSYNC=always", "OTHER=1",
		"WALRUS_PORT=tcp://10.0.0.1:8080")
	want := []string{
		fmt.Sprintf("config file %s: %q is not a setting", file, "fsnyc"),
		fmt.Sprintf("config file %s: %q is not a setting", file, "nats.port"),
		"environment: WALRUS_SERVICE_HOST is not a setting",
		fmt.Sprintf("config file %s: %q is overridden by the environment's WALRUS_FSYNC", file, "fsync"),
		"environment: WALRUS_PORT is not a setting",
	}
	if !slices.Equal(c.ignored, want) || c.Fsync != "always" {
		t.Fatalf("ignored %q, fsync %q; want %q", c.ignored, c.Fsync, want)
	}
}

// walrus config check validates like run, prints what the node would do
// and the effective settings as a file that --config accepts.
func TestConfigCheck(t *testing.T) {
	const adv = "walrus-1.walrus-headless.ns.svc.cluster.local"
	args := []string{"check", "--node-id-from-hostname", "--hostname", "walrus-1", "--raft-host", "0.0.0.0",
		"--client-host", "0.0.0.0", "--http-port", "9090", "--bootstrap-node-id", "1",
		"--join", "walrus-0.walrus-headless.ns.svc.cluster.local:6000," + adv + ":6000"}
	var stdout, stderr bytes.Buffer
	if code := runConfig(args, []string{"WALRUS_RAFT_ADVERTISE_HOST=" + adv, "WALRUS_DATA_DIR=/data"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr: %q", stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{
		"# node 2 (from the host name walrus-1), data in /data/node_2\n",
		"other nodes dial " + adv + ":6000\n",
		"advertised nats-route://" + adv + ":6222",
		"http 0.0.0.0:9090 (/metrics, /healthz, /readyz)",
		"else it joins through walrus-0.walrus-headless.ns.svc.cluster.local:6000\n",
		"\nnode-id: 2\n", "\nnode-id-from-hostname: false\n", "\nraft-advertise-host: " + adv + "\n",
		"# retention: off, every entry is kept\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// The output is a config file for the same node.
	file := filepath.Join(t.TempDir(), "effective.yaml")
	if err := os.WriteFile(file, stdout.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"WALRUS_RAFT_ADVERTISE_HOST=" + adv, "WALRUS_DATA_DIR=/data"}
	_, rest, _ := hostnameArg(args[1:])
	want, err := loadConfig(rest, env, &stderr, hostnameIs("walrus-1"))
	if err != nil {
		t.Fatal(err)
	}
	want.NodeIDFromHostname = false
	got := load(t, []string{"--config", file})
	want.NATSLeafnodeURL, got.NATSLeafnodeURL = nil, nil // "" and an empty list
	if !reflect.DeepEqual(got, want) {
		t.Errorf("re-read:\n%+v\nwant\n%+v", got, want)
	}

	// Node 1 bootstraps; an invalid configuration exits 2 like run.
	stdout.Reset()
	args[3] = "walrus-0"
	if code := runConfig(append(args, "--retention-max-age", "2d", "--retention-max-bytes", "1000"),
		[]string{"WALRUS_RAFT_ADVERTISE_HOST=x"}, &stdout, &stderr); code != 0 ||
		!strings.Contains(stdout.String(), "else it bootstraps a new cluster\n") ||
		!strings.Contains(stdout.String(), "# retention: deletes sealed segments: sealed over 48h0m0s ago; the oldest beyond 1000 bytes per topic\n") {
		t.Errorf("node 1: exit %d\n%s", code, stdout.String())
	}
	for _, tc := range [][]string{
		{"check", "--fsync", "sometimes"},
		{"check", "--log-format", "xml"},
		{"check", "--node-id-from-hostname", "--hostname", "walrus"},
		{"check", "--hostname"},
		{"verify"},
	} {
		stderr.Reset()
		if code := runConfig(tc, nil, &stdout, &stderr); code != 2 || stderr.Len() == 0 {
			t.Errorf("%q: exit %d, stderr %q; want 2 and a reason", tc, code, stderr.String())
		}
	}
	// --hostname may come anywhere, in every flag form; a bare word is a value.
	for _, tc := range []struct {
		args       []string
		name       string
		rest       []string
		hasHostArg bool
	}{
		{[]string{"--hostname", "w-1", "--x"}, "w-1", []string{"--x"}, true},
		{[]string{"--x", "-hostname=w-2"}, "w-2", []string{"--x"}, true},
		{[]string{"--log-file", "hostname"}, "", []string{"--log-file", "hostname"}, false},
		{[]string{"--x", "--hostname"}, "", []string{"--x"}, true},
	} {
		name, rest, ok := hostnameArg(tc.args)
		if name != tc.name || !slices.Equal(rest, tc.rest) || ok != tc.hasHostArg {
			t.Errorf("hostnameArg(%q) = %q, %q, %v", tc.args, name, rest, ok)
		}
	}
	// A setting that is not a flag is a warning, not an error.
	stderr.Reset()
	if code := runConfig([]string{"check"}, []string{"WALRUS_FSNYC=never"}, &stdout, &stderr); code != 0 ||
		!strings.Contains(stderr.String(), "warning: ignored: environment: WALRUS_FSNYC is not a setting") {
		t.Errorf("unknown env: exit %d, %q", code, stderr.String())
	}
}
