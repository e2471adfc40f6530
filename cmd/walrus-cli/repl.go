package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/walrus-edge/walrus/broker/protocol"
)

const prompt = "walrus> "

// runREPL runs the interactive shell. With a terminal on stdin and stdout
// it edits lines (arrows, history) in raw mode; otherwise it reads plain
// lines, so scripts can pipe commands in, and prints no prompt or banner.
func runREPL(ctx context.Context, cfg config, stdin io.Reader) int {
	if in, out, ok := terminalFiles(stdin, cfg.stdout); ok {
		if code, ok := runTerminalREPL(ctx, cfg, in, out); ok {
			return code
		}
	}
	return repl(ctx, cfg, plainSource{bufio.NewReader(stdin)}, cfg.stdout, cfg.stderr)
}

// terminalFiles returns stdin and stdout as files if both are terminals.
func terminalFiles(stdin io.Reader, stdout io.Writer) (in, out *os.File, ok bool) {
	in, inOK := stdin.(*os.File)
	out, outOK := stdout.(*os.File)
	if !inOK || !outOK || !term.IsTerminal(int(in.Fd())) || !term.IsTerminal(int(out.Fd())) {
		return nil, nil, false
	}
	return in, out, true
}

// runTerminalREPL runs the shell with line editing. ok is false if the
// terminal cannot be put in raw mode (the caller then reads plain lines).
func runTerminalREPL(ctx context.Context, cfg config, in, out *os.File) (code int, ok bool) {
	fd := int(in.Fd())
	old, err := term.MakeRaw(fd)
	if err != nil {
		return 0, false
	}
	defer func() { _ = term.Restore(fd, old) }()
	t := term.NewTerminal(struct {
		io.Reader
		io.Writer
	}{in, out}, prompt)
	if w, h, err := term.GetSize(int(out.Fd())); err == nil && w > 0 && h > 0 { // 0x0 on some ptys
		_ = t.SetSize(w, h)
	}
	fmt.Fprintf(t, "walrus-cli: target %s; type commands (REGISTER, PUT, GET, STATE, METRICS, FETCH, PING), exit or Ctrl-D to quit\n", cfg.addr)
	code = repl(ctx, cfg, termSource{t}, t, t)
	fmt.Fprintln(t)
	return code, true
}

// lineSource yields input lines; io.EOF ends the session.
type lineSource interface {
	ReadLine() (string, error)
}

// plainSource reads newline-terminated lines of any length; a last line
// without a newline still counts.
type plainSource struct{ r *bufio.Reader }

func (s plainSource) ReadLine() (string, error) {
	line, err := s.r.ReadString('\n')
	if errors.Is(err, io.EOF) && line != "" {
		return line, nil
	}
	return line, err
}

// termSource reads edited lines from a terminal. Ctrl-C and Ctrl-D (on an
// empty line) return io.EOF.
type termSource struct{ t *term.Terminal }

func (s termSource) ReadLine() (string, error) {
	line, err := s.t.ReadLine()
	if errors.Is(err, term.ErrPasteIndicator) {
		return line, nil // pasted text is a line like any other
	}
	return line, err
}

// isQuit reports whether a trimmed line ends the session.
func isQuit(line string) bool {
	for _, w := range []string{"exit", "quit", "q"} {
		if strings.EqualFold(line, w) {
			return true
		}
	}
	return false
}

type lineResult struct {
	line string
	err  error
}

// repl sends each trimmed, non-empty line verbatim as one request (quotes
// are not interpreted: `PUT logs "a b"` stores the quotes) and prints the
// raw reply to out; transport errors go to errOut as "ERR <error>" and the
// session goes on, as in the original. It returns when the input ends, on
// exit/quit/q, or when ctx is cancelled (SIGINT/SIGTERM).
func repl(ctx context.Context, cfg config, src lineSource, out, errOut io.Writer) int {
	s := &session{cfg: cfg}
	defer s.close()

	// The reader goroutine reads one line per request on want, so that
	// prompts and replies alternate. It exits when done is closed, except
	// while blocked in ReadLine on a terminal or pipe, which the process
	// exit ends.
	want := make(chan struct{})
	lines := make(chan lineResult)
	done := make(chan struct{})
	defer close(done)
	go readLines(src, want, lines, done)

	for {
		var lr lineResult
		select {
		case want <- struct{}{}:
		case <-ctx.Done():
			return exitOK
		}
		select {
		case lr = <-lines:
		case <-ctx.Done():
			return exitOK
		}
		if lr.err != nil {
			if errors.Is(lr.err, io.EOF) {
				return exitOK
			}
			fmt.Fprintf(errOut, "walrus-cli: read input: %v\n", lr.err)
			return exitFail
		}
		line := strings.TrimSpace(lr.line)
		if line == "" {
			continue
		}
		if isQuit(line) {
			return exitOK
		}
		reply, err := s.do(ctx, line)
		if err != nil {
			fmt.Fprintf(errOut, "ERR %v\n", err)
			continue
		}
		fmt.Fprintln(out, reply)
	}
}

// readLines feeds lines from src, one per receive on want.
func readLines(src lineSource, want <-chan struct{}, lines chan<- lineResult, done <-chan struct{}) {
	for {
		select {
		case <-want:
		case <-done:
			return
		}
		line, err := src.ReadLine()
		select {
		case lines <- lineResult{line, err}:
		case <-done:
			return
		}
		if err != nil {
			return
		}
	}
}

// session holds the REPL's one persistent connection. It dials on the
// first line (and again after a failed dial). The Client reconnects by
// itself when the server closed the idle connection, and on the next line
// after a broken one; a request that may have reached the server is never
// resent. (The original CLI opened a new connection for every command.)
type session struct {
	cfg    config
	client *protocol.Client
}

func (s *session) do(ctx context.Context, line string) (string, error) {
	ctx, cancel := s.cfg.withTimeout(ctx)
	defer cancel()
	if s.client == nil {
		c, err := protocol.Dial(ctx, s.cfg.addr)
		if err != nil {
			return "", err
		}
		s.client = c
	}
	return s.client.Do(ctx, line)
}

func (s *session) close() {
	if s.client != nil {
		_ = s.client.Close()
	}
}
