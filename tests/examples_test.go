package tests

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walrus-edge/walrus/tests/testcluster"
)

// The example programs in examples/, run as their users would run them
// against a 3-node cluster: a tail subscriber on node 3 and a consumer-group
// consumer on node 2 are running when the producer sends 20 acknowledged
// messages through node 1. The producer's acks are 20 distinct positions,
// the tail sees each of them, the consumer prints the 20 payloads in order
// and commits past them. Then the native TCP client, on node 3 and the same
// topic, PUTs its own messages and GETs everything through the shared
// cursor: the 20 NATS entries first, byte for byte, then its own.
func TestExamples(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin := buildExamples(t, ctx)
	// 10 entries per segment: 20 messages cross a rollover, so the entries
	// are stored by more than one node.
	c := testcluster.New(t, testcluster.Options{MaxSegmentEntries: 10})
	const topic, n = "orders", 20

	// Registered over TCP, used over NATS: the producer's own register is
	// then a no-op (it is idempotent), and the consumer's first fetch finds
	// the topic.
	if err := c.Client(1).Register(ctx, topic); err != nil {
		t.Fatalf("REGISTER %s: %v", topic, err)
	}

	// The tail must be subscribed before anything is produced: it prints
	// "subscribed" once its server has the subscription.
	tail := startExample(t, ctx, bin, "tail", "--url", c.Node(3).NATSURL, "--topic", topic,
		"--count", strconv.Itoa(n), "--timeout", "90s")
	tail.waitLine(t, ctx, "subscribed")
	consumer := startExample(t, ctx, bin, "consumer", "--url", c.Node(2).NATSURL, "--topic", topic,
		"--group", "examples-test", "--max", "7", "--wait-ms", "1000",
		"--count", strconv.Itoa(n), "--timeout", "90s")

	producer := startExample(t, ctx, bin, "producer", "--url", c.Node(1).NATSURL, "--topic", topic,
		"--count", strconv.Itoa(n))
	if err := producer.wait(ctx); err != nil {
		t.Fatalf("producer: %v", err)
	}
	acks := producer.match(`^ack topic=orders segment=\d+ offset=(\d+) id=\S+-(\d+) duplicate=false$`)
	if len(acks) != n {
		t.Fatalf("producer printed %d acks, want %d:\n%s", len(acks), n, producer.stdout())
	}
	payloadAt := map[string]string{} // offset -> payload, from the acks
	for i, a := range acks {
		if a[2] != strconv.Itoa(i) {
			t.Fatalf("ack %d is for message %s", i, a[2])
		}
		if _, dup := payloadAt[a[1]]; dup {
			t.Fatalf("offset %s acknowledged twice:\n%s", a[1], producer.stdout())
		}
		payloadAt[a[1]] = fmt.Sprintf("message %d", i)
	}

	// The tail: every acknowledged entry once, with its offset (the order
	// across segments stored by different nodes is not specified).
	if err := tail.wait(ctx); err != nil {
		t.Fatalf("tail: %v", err)
	}
	tailed := tail.match(`^offset=(\d+) segment=\d+ data=(".*")$`)
	if len(tailed) != n {
		t.Fatalf("tail printed %d entries, want %d:\n%s", len(tailed), n, tail.stdout())
	}
	for _, e := range tailed {
		if got, want := unquote(t, e[2]), payloadAt[e[1]]; got != want {
			t.Fatalf("tail: offset %s carries %q, the producer stored %q there", e[1], got, want)
		}
		delete(payloadAt, e[1]) // each offset once
	}

	// The consumer: the 20 payloads in order, then a commit past the last.
	if err := consumer.wait(ctx); err != nil {
		t.Fatalf("consumer: %v", err)
	}
	var consumed []string
	var lastOffset uint64
	for _, e := range consumer.match(`^offset=(\d+) segment=\d+ data=(".*")$`) {
		consumed = append(consumed, unquote(t, e[2]))
		lastOffset, _ = strconv.ParseUint(e[1], 10, 64)
	}
	equal(t, "consumer", consumed, seq("message ", n))
	commits := consumer.match(`^committed group=examples-test offset=(\d+)$`)
	if len(commits) == 0 || commits[len(commits)-1][1] != strconv.FormatUint(lastOffset+1, 10) {
		t.Fatalf("consumer's last commit is not offset %d:\n%s", lastOffset+1, consumer.stdout())
	}

	// The native client: GET drains the shared cursor, which nothing above
	// moved (fetch and tail do not).
	tcp := startExample(t, ctx, bin, "tcpclient", "--addr", c.Node(3).ClientAddr, "--topic", topic, "--count", "3")
	if err := tcp.wait(ctx); err != nil {
		t.Fatalf("tcpclient: %v", err)
	}
	var got []string
	for _, m := range tcp.match(`^GET orders -> OK (.*)$`) {
		got = append(got, m[1])
	}
	equal(t, "tcpclient GETs", got, append(seq("message ", n), seq("tcp message ", 3)...))
	if len(tcp.match(`^GET orders -> EMPTY$`)) != 1 || len(tcp.match(`^STATE orders -> \{.*"current_segment"`)) != 1 {
		t.Fatalf("tcpclient did not end with EMPTY and STATE:\n%s", tcp.stdout())
	}
}

// buildExamples builds every program under examples/ into a temporary
// directory and returns it.
func buildExamples(t *testing.T, ctx context.Context) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+string(os.PathSeparator), "./examples/...")
	cmd.Dir = ".." // the module root: go test runs in the package directory
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build examples: %v\n%s", err, out)
	}
	return dir
}

// example is an example program running in the background. Its stdout is
// kept line by line, its stderr whole; both are logged if the test fails.
type example struct {
	name   string
	out    lineBuffer
	errOut lineBuffer
	done   chan struct{}
	err    error // the exit status, set before done is closed
}

// startExample starts bin/name with args; the process is killed at the end
// of the test if it is still running.
func startExample(t *testing.T, ctx context.Context, bin, name string, args ...string) *example {
	t.Helper()
	e := &example{name: name, done: make(chan struct{})}
	cmd := exec.CommandContext(ctx, filepath.Join(bin, name), args...)
	cmd.Stdout, cmd.Stderr = &e.out, &e.errOut
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		e.err = cmd.Wait()
		close(e.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // it may have exited already
		<-e.done
		if t.Failed() {
			t.Logf("--- %s %s (%v) ---\nstdout:\n%s\nstderr:\n%s",
				name, strings.Join(args, " "), e.err, e.stdout(), e.errOut.String())
		}
	})
	return e
}

// wait waits for the process to exit and returns its exit status, with its
// stderr when it failed.
func (e *example) wait(ctx context.Context) error {
	select {
	case <-e.done:
	case <-ctx.Done():
		return fmt.Errorf("still running: %w", ctx.Err())
	}
	if e.err != nil {
		return fmt.Errorf("%w\nstderr:\n%s", e.err, e.errOut.String())
	}
	return nil
}

// waitLine waits until the process has printed line.
func (e *example) waitLine(t *testing.T, ctx context.Context, line string) {
	t.Helper()
	for !slices.Contains(e.out.lines(), line) {
		select {
		case <-e.done:
			t.Fatalf("%s exited (%v) before printing %q:\n%s", e.name, e.err, line, e.errOut.String())
		case <-ctx.Done():
			t.Fatalf("%s did not print %q: %v", e.name, line, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// match returns the submatches of every stdout line matching pattern.
func (e *example) match(pattern string) [][]string {
	re := regexp.MustCompile(pattern)
	var out [][]string
	for _, l := range e.out.lines() {
		if m := re.FindStringSubmatch(l); m != nil {
			out = append(out, m)
		}
	}
	return out
}

func (e *example) stdout() string { return e.out.String() }

// lineBuffer is an io.Writer that the test reads while the process writes.
type lineBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lineBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lineBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// lines returns the complete lines written so far.
func (b *lineBuffer) lines() []string {
	s := b.String()
	s = s[:strings.LastIndexByte(s, '\n')+1]
	if s == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

func unquote(t *testing.T, s string) string {
	t.Helper()
	u, err := strconv.Unquote(s)
	if err != nil {
		t.Fatalf("unquote %s: %v", s, err)
	}
	return u
}
