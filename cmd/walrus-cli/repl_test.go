package main

import (
	"bytes"
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/term"

	"github.com/walrus-edge/walrus/broker/protocol/protocoltest"
)

func TestREPL_Piped(t *testing.T) {
	t.Setenv(envAddr, "")
	srv := protocoltest.Start(t, protocoltest.NewMemory())
	script := strings.Join([]string{
		"REGISTER logs",
		`PUT logs "hello world"`,
		"",
		"   GET logs  \r",
		"GET logs",
		"put logs x",
		"PUT logs",
		"\tSTATE logs",
		"FETCH logs 1 0",
		"PING",
		"QuIt",
		"GET logs", // after quit: never sent
	}, "\n")
	r := runCLI(t, script, "--addr", srv.Addr())
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("repl = %d, stderr %q", r.code, r.stderr)
	}
	want := strings.Join([]string{
		"OK",
		"OK",
		`OK "hello world"`,
		"EMPTY",
		"ERR unknown command",
		"ERR PUT requires a payload",
		protocoltest.StateJSON,
		`OK 1 "hello world"`,
		"OK PONG",
	}, "\n") + "\n"
	if r.stdout != want {
		t.Fatalf("stdout:\n%s\nwant:\n%s", r.stdout, want)
	}
	sent := []string{"REGISTER logs", `PUT logs "hello world"`, "GET logs", "GET logs", "put logs x", "PUT logs", "STATE logs", "FETCH logs 1 0", "PING"}
	if got := srv.Requests(); strings.Join(got, "|") != strings.Join(sent, "|") {
		t.Fatalf("server saw %q, want %q", got, sent)
	}
	if n := srv.Accepted(); n != 1 {
		t.Fatalf("REPL used %d connections, want 1", n)
	}
}

func TestREPL_LastLineWithoutNewlineAndDefaultSubcommand(t *testing.T) {
	srv := protocoltest.Start(t, protocoltest.NewMemory())
	for _, args := range [][]string{{"--addr", srv.Addr()}, {"--addr", srv.Addr(), "repl"}} {
		r := runCLI(t, "PING\nPING", args...)
		if r.code != 0 || r.stdout != "OK PONG\nOK PONG\n" {
			t.Fatalf("walrus-cli %q = %+v", args, r)
		}
	}
}

func TestREPL_ServerDown(t *testing.T) {
	r := runCLI(t, "PING\nexit\n", "--addr", closedAddr(t))
	if r.code != 0 || r.stdout != "" || !strings.HasPrefix(r.stderr, "ERR ") {
		t.Fatalf("repl against a closed port = %+v", r)
	}
}

// syncBuffer is a bytes.Buffer safe for one writer and a polling reader.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// The server closing the REPL's idle connection (a restart, an idle
// timeout) is invisible to the user: the next line goes out on a new
// connection.
func TestREPL_ReconnectsTransparently(t *testing.T) {
	srv := protocoltest.Start(t, protocoltest.NewMemory())
	stdin, feed := io.Pipe()
	var out, errOut syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code := make(chan int, 1)
	go func() { code <- run(ctx, []string{"--addr", srv.Addr()}, stdin, &out, &errOut) }()

	for i := 1; i <= 3; i++ {
		if _, err := io.WriteString(feed, "PING\n"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "reply", func() bool { return strings.Count(out.String(), "OK PONG\n") == i })
		srv.DropConns()
		waitFor(t, "server to close", func() bool { return srv.OpenConns() == 0 })
	}
	_ = feed.Close()
	if c := <-code; c != 0 || errOut.String() != "" {
		t.Fatalf("repl = %d, stderr %q", c, errOut.String())
	}
	if n := srv.Accepted(); n != 3 {
		t.Fatalf("accepted %d connections, want 3", n)
	}
}

func TestREPL_CancelWhileWaitingForInput(t *testing.T) {
	srv := protocoltest.Start(t, protocoltest.NewMemory())
	stdin, feed := io.Pipe()
	defer feed.Close()
	ctx, cancel := context.WithCancel(context.Background())
	code := make(chan int, 1)
	go func() { code <- run(ctx, []string{"--addr", srv.Addr()}, stdin, io.Discard, io.Discard) }()
	cancel() // SIGINT/SIGTERM in a piped session
	select {
	case c := <-code:
		if c != 0 {
			t.Fatalf("exit code %d", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("REPL did not stop on cancellation")
	}
}

// fakeTTY feeds keystrokes to a term.Terminal and records what it draws.
type fakeTTY struct {
	in  io.Reader
	out syncBuffer
}

func (f *fakeTTY) Read(p []byte) (int, error)  { return f.in.Read(p) }
func (f *fakeTTY) Write(p []byte) (int, error) { return f.out.Write(p) }

func TestREPL_Terminal(t *testing.T) {
	srv := protocoltest.Start(t, protocoltest.NewMemory())
	// "REGISTER t", "PUT t a b", then up-arrow twice (history) to repeat
	// "REGISTER t", then Ctrl-D on an empty line.
	keys := "REGISTER t\rPUT t a b\r\x1b[A\x1b[A\r\x04"
	tty := &fakeTTY{in: strings.NewReader(keys)}
	tm := term.NewTerminal(tty, prompt)
	cfg := config{addr: srv.Addr(), timeout: 5 * time.Second}
	if code := repl(context.Background(), cfg, termSource{tm}, tm, tm); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	want := []string{"REGISTER t", "PUT t a b", "REGISTER t"}
	if got := srv.Requests(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("server saw %q, want %q", got, want)
	}
	screen := tty.out.String()
	if !strings.Contains(screen, prompt) || strings.Count(screen, "OK\r\n") != 3 {
		t.Fatalf("terminal output %q lacks prompts or CRLF replies", screen)
	}
}

func TestREPL_TerminalCtrlC(t *testing.T) {
	srv := protocoltest.Start(t, protocoltest.NewMemory())
	tty := &fakeTTY{in: strings.NewReader("PIN\x03G\r")}
	tm := term.NewTerminal(tty, prompt)
	cfg := config{addr: srv.Addr(), timeout: 5 * time.Second}
	if code := repl(context.Background(), cfg, termSource{tm}, tm, tm); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if got := srv.Requests(); len(got) != 0 {
		t.Fatalf("Ctrl-C did not quit: server saw %q", got)
	}
}
