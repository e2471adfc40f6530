package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
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
