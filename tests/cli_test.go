package tests

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/walrus-edge/walrus/tests/testcluster"
)

// The original's cli_e2e, on a single node with zero configuration beyond
// ports: PUT to an unknown topic fails naming it, REGISTER twice is fine,
// five PUTs come back in order through GET, then EMPTY; STATE, METRICS and
// garbage answer as the original did.
func TestCLI_EndToEnd(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Nodes: 1})
	addr := c.Node(1).ClientAddr
	cli := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, c.CLI(), append([]string{"--addr", addr}, args...)...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return strings.TrimSpace(out.String()), err
	}
	if out, err := cli("put", "missing", "payload"); err == nil || !strings.Contains(strings.ToLower(out), "unknown topic") {
		t.Fatalf("put to an unknown topic: %q, %v", out, err)
	}
	for range 2 {
		if out, err := cli("register", "logs"); err != nil {
			t.Fatalf("register: %q, %v", out, err)
		}
	}
	words := []string{"one", "two", "three", "four", "five"}
	for _, w := range words {
		if out, err := cli("put", "logs", w); err != nil {
			t.Fatalf("put %s: %q, %v", w, out, err)
		}
	}
	for _, w := range words {
		if out, err := cli("get", "logs"); err != nil || !strings.Contains(out, w) {
			t.Fatalf("get: %q, %v (want %s)", out, err, w)
		}
	}
	if out, _ := cli("get", "logs"); !strings.Contains(out, "EMPTY") {
		t.Fatalf("get of a drained topic: %q", out)
	}
	if out, err := cli("state", "logs"); err != nil || !strings.Contains(out, "leader_node") {
		t.Fatalf("state: %q, %v", out, err)
	}
	if out, err := cli("metrics"); err != nil || !strings.Contains(out, "state") {
		t.Fatalf("metrics: %q, %v", out, err)
	}
	// The REPL, driven through a pipe: each line is one command.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	repl := exec.CommandContext(ctx, c.CLI(), "--addr", addr)
	repl.Stdin = strings.NewReader("PUT logs hello world\nGET logs\nGARBAGE\nquit\n")
	out, err := repl.CombinedOutput()
	if err != nil {
		t.Fatalf("repl: %v\n%s", err, out)
	}
	for _, want := range []string{"OK", "OK hello world", "ERR unknown command"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("repl output lacks %q:\n%s", want, out)
		}
	}
}

// Bad input never desyncs a connection or crashes the node: each case gets
// the original's ERR text, the connection keeps working where the protocol
// allows it, and an oversized frame is answered and the connection closed.
func TestProtocol_BadInput(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Nodes: 1})
	conn, err := net.DialTimeout("tcp", c.Node(1).ClientAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	send := func(body []byte) {
		t.Helper()
		var hdr [4]byte
		binary.LittleEndian.PutUint32(hdr[:], uint32(len(body)))
		if _, err := conn.Write(append(hdr[:], body...)); err != nil {
			t.Fatal(err)
		}
	}
	recv := func() string {
		t.Helper()
		var hdr [4]byte
		if _, err := io.ReadFull(conn, hdr[:]); err != nil {
			t.Fatalf("read reply: %v", err)
		}
		b := make([]byte, binary.LittleEndian.Uint32(hdr[:]))
		if _, err := io.ReadFull(conn, b); err != nil {
			t.Fatalf("read reply body: %v", err)
		}
		return string(b)
	}
	cases := []struct{ body, want string }{
		{"", "ERR invalid frame length"},
		{"\xff\xfe", "ERR invalid utf-8"},
		{"   ", "ERR unknown command"},
		{"GARBAGE", "ERR unknown command"},
		{"put logs x", "ERR unknown command"},
		{"PUT", "ERR PUT requires a topic"},
		{"PUT logs", "ERR PUT requires a payload"},
		{"GET", "ERR GET requires a topic"},
		{"STATE", "ERR STATE requires a topic"},
		{"REGISTER", "ERR REGISTER requires a topic"},
		{"GET nope", "ERR unknown topic nope"},
		{"FETCH logs x y", "ERR FETCH requires a topic, a segment and an offset"},
		{"REGISTER " + strings.Repeat("t", 300), "ERR invalid topic name"},
		{"REGISTER logs", "OK"},
		{"PUT logs a b  c ", "OK"},
		{"GET logs", "OK a b  c"},
		{"GET logs", "EMPTY"},
		{"PING", "OK PONG"},
	}
	for _, tc := range cases {
		if tc.body == "" {
			if _, err := conn.Write([]byte{0, 0, 0, 0}); err != nil {
				t.Fatal(err)
			}
		} else {
			send([]byte(tc.body))
		}
		if got := recv(); !strings.HasPrefix(got, tc.want) {
			t.Fatalf("%q → %q, want %q", tc.body, got, tc.want)
		}
	}
	// An oversized frame: ERR, then the server closes the connection.
	var hdr [4]byte
	binary.LittleEndian.PutUint32(hdr[:], 1<<20)
	if _, err := conn.Write(append(hdr[:], "PUT logs xxxx"...)); err != nil {
		t.Fatal(err)
	}
	if got := recv(); got != "ERR invalid frame length" {
		t.Fatalf("oversized frame → %q", got)
	}
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatal("the connection stayed open after an oversized frame")
	}
	// The node still serves.
	cl := c.Client(1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cl.Put(ctx, "logs", []byte("still serving")); err != nil {
		t.Fatal(err)
	}
}
