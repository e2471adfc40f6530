package main

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/walrus-edge/walrus/broker/protocol"
	"github.com/walrus-edge/walrus/broker/protocol/protocoltest"
)

type result struct {
	code           int
	stdout, stderr string
}

func runCLI(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	code := run(ctx, args, strings.NewReader(stdin), &out, &errOut)
	return result{code, out.String(), errOut.String()}
}

func TestRun_OneShots(t *testing.T) {
	t.Setenv(envAddr, "")
	srv := protocoltest.Start(t, protocoltest.NewMemory())
	a := "--addr=" + srv.Addr()
	steps := []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{[]string{a, "put", "missing", "x"}, 1, "", "ERR unknown topic missing\n"},
		{[]string{a, "register", "logs"}, 0, "OK\n", ""},
		{[]string{a, "register", "logs"}, 0, "OK\n", ""},
		{[]string{a, "put", "logs", "hello", "big", "world"}, 0, "OK\n", ""},
		{[]string{a, "put", "logs", `"quoted"`}, 0, "OK\n", ""},
		{[]string{a, "fetch", "logs", "1", "0"}, 0, "1 hello big world\n", ""},
		{[]string{a, "fetch", "logs", "1", "9"}, 0, "EMPTY\n", ""},
		{[]string{a, "get", "logs"}, 0, "hello big world\n", ""},
		{[]string{a, "get", "logs"}, 0, "\"quoted\"\n", ""},
		{[]string{a, "get", "logs"}, 0, "EMPTY\n", ""},
		{[]string{a, "state", "logs"}, 0, protocoltest.StateJSON + "\n", ""},
		{[]string{a, "state", "nope"}, 1, "", "ERR unknown topic nope\n"},
		{[]string{a, "metrics"}, 0, protocoltest.MetricsJSON + "\n", ""},
		{[]string{a, "ping"}, 0, "PONG\n", ""},
		{[]string{"-addr", srv.Addr(), "-timeout", "5s", "ping"}, 0, "PONG\n", ""},
	}
	for _, st := range steps {
		r := runCLI(t, "", st.args...)
		if r.code != st.code || r.stdout != st.stdout || r.stderr != st.stderr {
			t.Errorf("walrus-cli %q = %d, stdout %q, stderr %q; want %d, %q, %q",
				st.args, r.code, r.stdout, r.stderr, st.code, st.stdout, st.stderr)
		}
	}
	want := []string{"PUT missing x", "REGISTER logs", "REGISTER logs", "PUT logs hello big world", `PUT logs "quoted"`,
		"FETCH logs 1 0", "FETCH logs 1 9", "GET logs", "GET logs", "GET logs", "STATE logs", "STATE nope", "METRICS", "PING", "PING"}
	if got := srv.Requests(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("server saw %q\nwant %q", got, want)
	}
}

func TestRun_Usage(t *testing.T) {
	t.Setenv(envAddr, "")
	srv := protocoltest.Start(t, protocoltest.NewMemory())
	a := "--addr=" + srv.Addr()
	for _, args := range [][]string{
		{a, "register"},
		{a, "register", "a", "b"},
		{a, "get"},
		{a, "state"},
		{a, "put", "t"},
		{a, "fetch", "t", "1"},
		{a, "fetch", "t", "x", "0"},
		{a, "fetch", "t", "1", "-1"},
		{a, "metrics", "x"},
		{a, "bogus"},
		{a, "repl", "x"},
		{a, "put", "a b", "x"}, // would silently become topic "a", payload "b x"
		{a, "put", "t", "\xff"},
		{"--bogus"},
		{"--timeout", "-1s", "ping"},
		{"--addr", "", "ping"},
	} {
		r := runCLI(t, "", args...)
		if r.code != 2 || r.stderr == "" || r.stdout != "" {
			t.Errorf("walrus-cli %q = %d, stdout %q, stderr %q; want exit 2 with a message", args, r.code, r.stdout, r.stderr)
		}
	}
	if got := srv.Requests(); len(got) != 0 {
		t.Errorf("usage errors reached the server: %q", got)
	}
	for _, args := range [][]string{{"help"}, {"-h"}} {
		r := runCLI(t, "", args...)
		if r.code != 0 || !strings.Contains(r.stdout+r.stderr, "usage: walrus-cli") {
			t.Errorf("walrus-cli %q = %d, %q %q", args, r.code, r.stdout, r.stderr)
		}
	}
}

func TestRun_AddrFromEnv(t *testing.T) {
	srv := protocoltest.Start(t, protocoltest.NewMemory())
	t.Setenv(envAddr, srv.Addr())
	if r := runCLI(t, "", "ping"); r.code != 0 || r.stdout != "PONG\n" {
		t.Fatalf("ping via $WALRUS_ADDR = %+v", r)
	}
	t.Setenv(envAddr, "127.0.0.1:1") // --addr wins over the environment
	if r := runCLI(t, "", "--addr", srv.Addr(), "ping"); r.code != 0 {
		t.Fatalf("--addr did not override $WALRUS_ADDR: %+v", r)
	}
}

func TestRun_ConnectionRefused(t *testing.T) {
	addr := closedAddr(t)
	r := runCLI(t, "", "--addr", addr, "get", "logs")
	if r.code != 1 || !strings.Contains(r.stderr, addr) || r.stdout != "" {
		t.Fatalf("get against a closed port = %+v", r)
	}
}

func TestRun_Timeout(t *testing.T) {
	release := make(chan struct{})
	srv := protocoltest.Start(t, protocoltest.HandlerFunc(func(protocol.Command) protocol.Reply {
		<-release
		return protocol.OKReply()
	}))
	defer close(release)
	start := time.Now()
	r := runCLI(t, "", "--addr", srv.Addr(), "--timeout", "100ms", "register", "t")
	if r.code != 1 || !strings.Contains(r.stderr, "deadline exceeded") {
		t.Fatalf("register against a silent server = %+v", r)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("timeout not honoured: %v", d)
	}
}

func TestRun_UnexpectedReply(t *testing.T) {
	srv := protocoltest.Start(t, protocoltest.HandlerFunc(func(protocol.Command) protocol.Reply {
		return protocol.EmptyReply()
	}))
	r := runCLI(t, "", "--addr", srv.Addr(), "register", "t")
	if r.code != 1 || !strings.Contains(r.stderr, "unexpected reply") {
		t.Fatalf("register answered EMPTY = %+v", r)
	}
}

func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}
