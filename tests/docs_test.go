package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/walrus-edge/walrus/tests/testcluster"
)

// The NATS usage in docs/nats.md and in the README's "NATS clients" section
// must work as written. TestDocs_NATSCLI reads the shell blocks of both
// documents and runs every command in them with the real nats CLI (and
// walrus-cli) against a 3-node cluster started as the README says:
//
//   - `nats sub` lines are started first, in the background, and must end
//     up having received every entry appended to a matching topic during
//     the run, with its Walrus-Offset header and payload;
//   - `nats req` lines must succeed, and where the document shows the reply
//     (a `# {...}` comment on the line or the line after) the reply must be
//     exactly that;
//   - `nats pub` lines must succeed, and what they publish (to a topic's
//     publish subject or to a captured subject) must end up stored in the
//     topic, headers (-H) included;
//   - any other command fails the test unless it is listed in docsSkipped,
//     so a new kind of line cannot go untested unnoticed.
//
// Commands without `-s` go to the nodes in turn (1, 2, 3, 1, ...): every
// node serves every subject. The README's fixed ports are mapped to the
// test cluster's.
//
// The nats CLI is installed by the Makefile at a pinned version and passed
// in WALRUS_TEST_NATS_CLI; `make test` always sets it.

// docsSkipped are command prefixes the documents show that this test does
// not run, with where they are covered instead.
var docsSkipped = map[string]string{
	"walrus --nats-leafnode-url": "TestNATS_Leafnode and bridge/leafnode_test.go",
}

func TestDocs_NATSCLI(t *testing.T) {
	cli := os.Getenv("WALRUS_TEST_NATS_CLI")
	if cli == "" {
		t.Skip("WALRUS_TEST_NATS_CLI is not set (make test-integration installs the nats CLI and sets it)")
	}
	for _, doc := range []struct{ name, file, section string }{
		{"docs_nats.md", "../docs/nats.md", ""},
		{"README", "../README.md", "## NATS clients"},
	} {
		t.Run(doc.name, func(t *testing.T) {
			src, err := os.ReadFile(doc.file)
			if err != nil {
				t.Fatal(err)
			}
			cmds, err := parseDocCommands(string(src), doc.section)
			if err != nil {
				t.Fatalf("%s: %v", doc.file, err)
			}
			if len(cmds) == 0 {
				t.Fatalf("%s: no commands found", doc.file)
			}
			runDocCommands(t, cli, cmds)
		})
	}
}

// docCommand is one command line of a document's shell blocks.
type docCommand struct {
	line   int      // in the document, 1-based
	end    int      // its last line (continued with \)
	text   string   // as written
	words  []string // after shell quoting
	expect string   // the reply the document shows, if any
}

// parseDocCommands returns the commands of every ```sh block of src, or of
// the section of src that starts with the heading section.
func parseDocCommands(src, section string) ([]docCommand, error) {
	lines := strings.Split(src, "\n")
	first, last := 0, len(lines)
	if section != "" {
		first = slices.Index(lines, section)
		if first < 0 {
			return nil, fmt.Errorf("no section %q", section)
		}
		for i := first + 1; i < len(lines); i++ {
			if strings.HasPrefix(lines[i], "## ") {
				last = i
				break
			}
		}
	}
	var cmds []docCommand
	inBlock := false
	for i := first; i < last; i++ {
		line := strings.TrimSpace(lines[i])
		switch {
		case strings.HasPrefix(line, "```"):
			inBlock = !inBlock && line == "```sh"
			continue
		case !inBlock || line == "":
			continue
		}
		start := i
		for strings.HasSuffix(line, "\\") && i+1 < last { // continued on the next line
			i++
			line = strings.TrimSuffix(line, "\\") + " " + strings.TrimSpace(lines[i])
		}
		words, comment, err := shellWords(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		if len(words) == 0 { // a comment line: the reply of the command above
			if strings.HasPrefix(comment, "{") && len(cmds) > 0 && cmds[len(cmds)-1].end == i {
				cmds[len(cmds)-1].expect = comment
			}
			continue
		}
		c := docCommand{line: start + 1, end: i + 1, text: line, words: words}
		if strings.HasPrefix(comment, "{") {
			c.expect = comment
		}
		cmds = append(cmds, c)
	}
	return cmds, nil
}

// shellWords splits a command line as sh would for the simple quoting the
// documents use ('...', "..." with backslash escapes, # comments), and
// returns the trailing comment.
func shellWords(line string) (words []string, comment string, err error) {
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(line); i++ {
		ch := line[i]
		switch {
		case ch == ' ' || ch == '\t':
			if inWord {
				words, inWord = append(words, cur.String()), false
				cur.Reset()
			}
		case ch == '#' && !inWord:
			return words, strings.TrimSpace(line[i+1:]), nil
		case ch == '\'':
			end := strings.IndexByte(line[i+1:], '\'')
			if end < 0 {
				return nil, "", fmt.Errorf("unterminated ' in %q", line)
			}
			cur.WriteString(line[i+1 : i+1+end])
			i, inWord = i+1+end, true
		case ch == '"':
			j := i + 1
			for ; j < len(line) && line[j] != '"'; j++ {
				if line[j] == '\\' && j+1 < len(line) {
					j++
				}
				cur.WriteByte(line[j])
			}
			if j == len(line) {
				return nil, "", fmt.Errorf("unterminated \" in %q", line)
			}
			i, inWord = j, true
		default:
			cur.WriteByte(ch)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, "", nil
}

// docRun is the state of one document's run.
type docRun struct {
	t     *testing.T
	cli   string
	c     *testcluster.Cluster
	nc    []*nats.Conn // a nats.go client per node, for probes and checks
	env   []string
	next  int                 // the node the next command without -s goes to
	subs  []*docSub           // background `nats sub` processes
	pubs  []docPub            // what pub and req lines produced
	binds map[string][]string // topic -> captured subjects
	gets  map[string][]string // topic -> what walrus-cli get printed
}

// docPub is a message a document line published, to a topic's publish
// subject or to a captured subject.
type docPub struct {
	cmd     docCommand
	subject string
	body    string
	headers map[string]string
}

// docSub is a background `nats sub`.
type docSub struct {
	cmd     docCommand
	subject string
	out     *lineBuffer
	proc    *exec.Cmd
	done    chan struct{}
}

func runDocCommands(t *testing.T, cli string, cmds []docCommand) {
	c := testcluster.New(t, testcluster.Options{})
	home := t.TempDir() // no user nats contexts
	r := &docRun{
		t: t, cli: cli, c: c, binds: map[string][]string{}, gets: map[string][]string{},
		env: append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+home, "NATS_CONTEXT="),
	}
	for _, n := range c.Nodes {
		r.nc = append(r.nc, natsConnect(t, n))
	}
	// Subscriptions first, so that they see everything the rest appends.
	for _, cmd := range cmds {
		if len(cmd.words) > 0 && cmd.words[0] == "nats" && r.verb(cmd) == "sub" {
			r.startSub(cmd)
		}
	}
	for _, cmd := range cmds {
		r.run(cmd)
	}
	r.checkStored()
	for _, s := range r.subs {
		r.checkSub(s)
	}
}

// natsArgs maps a nats command's server to a test node and returns the
// arguments for the CLI, the subcommand first after -s.
func (r *docRun) natsArgs(cmd docCommand) (node *testcluster.Node, args []string) {
	w := cmd.words[1:]
	if len(w) >= 2 && w[0] == "-s" {
		node = r.mapNATSURL(cmd, w[1])
		w = w[2:]
	} else {
		node = r.c.Nodes[r.next%len(r.c.Nodes)]
		r.next++
	}
	return node, append([]string{"-s", node.NATSURL}, w...)
}

func (r *docRun) verb(cmd docCommand) string {
	w := cmd.words[1:]
	if len(w) >= 2 && w[0] == "-s" {
		w = w[2:]
	}
	if len(w) == 0 {
		r.t.Fatalf("line %d: %q: no nats subcommand", cmd.line, cmd.text)
	}
	return w[0]
}

// mapNATSURL maps the README's ports 4222-4224 to nodes 1-3.
func (r *docRun) mapNATSURL(cmd docCommand, url string) *testcluster.Node {
	m := regexp.MustCompile(`^nats://127\.0\.0\.1:422([2-4])$`).FindStringSubmatch(url)
	if m == nil {
		r.t.Fatalf("line %d: server %q is not one of the README's nodes", cmd.line, url)
	}
	return r.c.Node(int(m[1][0]-'2') + 1)
}

// mapClientAddr maps the README's TCP ports 9091-9093 to nodes 1-3.
func (r *docRun) mapClientAddr(cmd docCommand, addr string) *testcluster.Node {
	m := regexp.MustCompile(`^127\.0\.0\.1:909([1-3])$`).FindStringSubmatch(addr)
	if m == nil {
		r.t.Fatalf("line %d: address %q is not one of the README's nodes", cmd.line, addr)
	}
	return r.c.Node(int(m[1][0]-'1') + 1)
}

func (r *docRun) run(cmd docCommand) {
	t := r.t
	switch name := cmd.words[0]; {
	case name == "nats":
		switch verb := r.verb(cmd); verb {
		case "sub": // started before
		case "req", "pub":
			r.runNATS(cmd, verb)
		default:
			t.Fatalf("line %d: %q: nats %s is not covered by this test", cmd.line, cmd.text, verb)
		}
	case filepath.Base(name) == "walrus-cli":
		r.runCLI(cmd)
	default:
		for prefix, where := range docsSkipped {
			if strings.HasPrefix(cmd.text, prefix) {
				t.Logf("line %d: not run here (covered by %s): %s", cmd.line, where, cmd.text)
				return
			}
		}
		t.Fatalf("line %d: %q: unknown command; run it in this test or list it in docsSkipped", cmd.line, cmd.text)
	}
}

// runNATS runs a `nats req` or `nats pub` line and records what it
// produced.
func (r *docRun) runNATS(cmd docCommand, verb string) {
	t := r.t
	node, args := r.natsArgs(cmd)
	stdout, stderr := r.exec(cmd, r.cli, args...)
	t.Logf("line %d on node %d: %s\n%s", cmd.line, node.ID, cmd.text, stdout)
	if strings.Contains(stderr, "Walrus-Error") || strings.Contains(stderr, "nats: error") {
		t.Fatalf("line %d: %q failed:\n%s%s", cmd.line, cmd.text, stderr, stdout)
	}
	subject, body, headers := r.pubParts(cmd, args[2:])
	reply := strings.TrimSpace(stdout)
	if verb == "req" {
		if reply == "" {
			t.Fatalf("line %d: %q: no reply (stderr: %s)", cmd.line, cmd.text, stderr)
		}
		if cmd.expect != "" && reply != cmd.expect {
			t.Fatalf("line %d: %q replied\n%s\nthe document shows\n%s", cmd.line, cmd.text, reply, cmd.expect)
		}
	}
	switch {
	case strings.HasPrefix(subject, "walrus.pub."):
		r.pubs = append(r.pubs, docPub{cmd, subject, body, headers})
	case strings.HasPrefix(subject, "walrus.admin.capture."):
		var b struct{ Subjects []string }
		if err := json.Unmarshal([]byte(body), &b); err != nil {
			t.Fatalf("line %d: capture body: %v", cmd.line, err)
		}
		r.binds[strings.TrimPrefix(subject, "walrus.admin.capture.")] = b.Subjects
	case !strings.HasPrefix(subject, "walrus."):
		if verb != "pub" {
			t.Fatalf("line %d: %q: a request to a non-Walrus subject", cmd.line, cmd.text)
		}
		r.pubs = append(r.pubs, docPub{cmd, subject, body, headers})
	}
}

// pubParts returns the subject, body and -H headers of `req|pub subject
// body [flags]`.
func (r *docRun) pubParts(cmd docCommand, w []string) (subject, body string, headers map[string]string) {
	if len(w) < 3 {
		r.t.Fatalf("line %d: %q: want nats %s <subject> <body>", cmd.line, cmd.text, w[0])
	}
	subject, body, headers = w[1], w[2], map[string]string{}
	for i := 3; i < len(w); i++ {
		if w[i] == "-H" && i+1 < len(w) {
			k, v, _ := strings.Cut(w[i+1], ":")
			headers[k] = v
			i++
		}
	}
	return subject, body, headers
}

// runCLI runs a `walrus-cli --addr host:port get <topic>` line.
func (r *docRun) runCLI(cmd docCommand) {
	t := r.t
	w := cmd.words[1:]
	if len(w) != 4 || w[0] != "--addr" || w[2] != "get" {
		t.Fatalf("line %d: %q: only `walrus-cli --addr <addr> get <topic>` is covered", cmd.line, cmd.text)
	}
	node := r.mapClientAddr(cmd, w[1])
	stdout, stderr := r.exec(cmd, r.c.CLI(), "--addr", node.ClientAddr, "get", w[3])
	t.Logf("line %d on node %d: %s\n%s%s", cmd.line, node.ID, cmd.text, stdout, stderr)
	r.gets[w[3]] = append(r.gets[w[3]], strings.TrimSuffix(stdout, "\n"))
}

func (r *docRun) exec(cmd docCommand, name string, args ...string) (stdout, stderr string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := exec.CommandContext(ctx, name, args...)
	p.Env = r.env
	var out, errb bytes.Buffer
	p.Stdout, p.Stderr = &out, &errb
	if err := p.Run(); err != nil {
		r.t.Fatalf("line %d: %q: %v\n%s%s", cmd.line, cmd.text, err, errb.String(), out.String())
	}
	return out.String(), errb.String()
}

// startSub starts a `nats sub` line in the background and returns once
// every node routes its subject to it: a probe published on a matching
// subject through each node must arrive.
func (r *docRun) startSub(cmd docCommand) {
	t := r.t
	node, args := r.natsArgs(cmd)
	if len(args) != 4 {
		t.Fatalf("line %d: %q: want nats sub <subject>", cmd.line, cmd.text)
	}
	s := &docSub{cmd: cmd, subject: args[3], out: &lineBuffer{}, done: make(chan struct{})}
	s.proc = exec.Command(r.cli, args...)
	s.proc.Env, s.proc.Stdout, s.proc.Stderr = r.env, s.out, s.out
	if err := s.proc.Start(); err != nil {
		t.Fatalf("line %d: %v", cmd.line, err)
	}
	go func() { // owned by the cleanup below, which waits for it
		_ = s.proc.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		_ = s.proc.Process.Kill()
		<-s.done
	})
	r.subs = append(r.subs, s)
	t.Logf("line %d on node %d: %s (background)", cmd.line, node.ID, cmd.text)

	probeSubject := strings.ReplaceAll(strings.ReplaceAll(s.subject, ">", "docs-probe"), "*", "docs-probe")
	deadline := time.Now().Add(15 * time.Second)
	for i, nc := range r.nc {
		probe := fmt.Sprintf("docs-probe-%d-%d", cmd.line, i+1)
		// Route interest spreads asynchronously; a probe published before
		// it reached node i+1 is dropped by NATS, so publish until one
		// arrives.
		for !strings.Contains(s.out.String(), probe) {
			if time.Now().After(deadline) {
				t.Fatalf("line %d: %q never received a probe through node %d:\n%s", cmd.line, cmd.text, i+1, s.out.String())
			}
			if err := nc.Publish(probeSubject, []byte(probe)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// storedEntry is an entry read back with a fetch.
type storedEntry struct {
	Offset  uint64              `json:"offset"`
	Headers map[string][]string `json:"headers"`
	Data    []byte              `json:"data"`
}

// fetchAll reads every entry of topic through node 1.
func (r *docRun) fetchAll(topic string) []storedEntry {
	m := natsReq(r.t, r.nc[0], "walrus.fetch."+topic, []byte(`{"offset":0,"max":1000}`))
	var f struct{ Entries []storedEntry }
	if err := json.Unmarshal(m.Data, &f); err != nil {
		r.t.Fatalf("fetch %s: %v: %s", topic, err, m.Data)
	}
	return f.Entries
}

// topicOf returns the topic a published message goes to.
func (r *docRun) topicOf(p docPub) string {
	if topic, ok := strings.CutPrefix(p.subject, "walrus.pub."); ok {
		return topic
	}
	for topic, subjects := range r.binds {
		for _, s := range subjects {
			if subjectMatches(s, p.subject) {
				return topic
			}
		}
	}
	r.t.Fatalf("line %d: %q publishes to %s, which no topic captures", p.cmd.line, p.cmd.text, p.subject)
	return ""
}

// checkStored checks that every message the document published is stored
// in its topic with its headers (plain publishes are at-most-once, so they
// are waited for, within a bound), and that walrus-cli get printed stored
// payloads.
func (r *docRun) checkStored() {
	t := r.t
	for _, p := range r.pubs {
		topic := r.topicOf(p)
		deadline := time.Now().Add(10 * time.Second)
		for {
			if e, ok := findEntry(r.fetchAll(topic), p.body); ok {
				for k, v := range p.headers {
					if got := e.Headers[k]; len(got) != 1 || got[0] != v {
						t.Fatalf("line %d: entry %d of %s has header %s = %q, want %q", p.cmd.line, e.Offset, topic, k, got, v)
					}
				}
				if !strings.HasPrefix(p.subject, "walrus.") {
					if got := e.Headers["Walrus-Subject"]; len(got) != 1 || got[0] != p.subject {
						t.Fatalf("line %d: captured entry %d has Walrus-Subject %q, want %q", p.cmd.line, e.Offset, got, p.subject)
					}
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("line %d: %q: %q is not stored in topic %s", p.cmd.line, p.cmd.text, p.body, topic)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for topic, got := range r.gets {
		entries := r.fetchAll(topic)
		for _, g := range got {
			if _, ok := findEntry(entries, g); !ok {
				t.Fatalf("walrus-cli get %s printed %q, which is not an entry of the topic", topic, g)
			}
		}
	}
}

func findEntry(entries []storedEntry, body string) (storedEntry, bool) {
	for _, e := range entries {
		if string(e.Data) == body {
			return e, true
		}
	}
	return storedEntry{}, false
}

// checkSub checks that a background subscriber received every entry of
// every topic its subject matches, with its offset.
func (r *docRun) checkSub(s *docSub) {
	t := r.t
	topics := map[string]bool{}
	for _, p := range r.pubs {
		topic := r.topicOf(p)
		if subjectMatches(s.subject, "walrus.tail."+topic) {
			topics[topic] = true
		}
	}
	if len(topics) == 0 {
		t.Fatalf("line %d: %q: the document appends nothing it would receive", s.cmd.line, s.cmd.text)
	}
	for topic := range topics {
		for _, e := range r.fetchAll(topic) {
			want := []string{
				fmt.Sprintf("Received on %q\n", "walrus.tail."+topic),
				fmt.Sprintf("\nWalrus-Topic: %s\n", topic),
				fmt.Sprintf("\nWalrus-Offset: %d\n", e.Offset),
			}
			deadline := time.Now().Add(10 * time.Second)
			for !subGot(s.out.String(), want, string(e.Data)) {
				if time.Now().After(deadline) {
					t.Fatalf("line %d: %q did not receive entry %d of %s (%q):\n%s", s.cmd.line, s.cmd.text, e.Offset, topic, e.Data, s.out.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
}

// subGot reports whether the nats sub output holds a message whose header
// block contains every line of want and whose body is body.
func subGot(out string, want []string, body string) bool {
	for _, msg := range strings.Split(out, "\n[#") {
		hdr, payload, ok := strings.Cut(msg, "\n\n")
		if !ok || strings.TrimSpace(payload) != body {
			continue
		}
		hdr += "\n"
		if !slices.ContainsFunc(want, func(w string) bool { return !strings.Contains(hdr, w) }) {
			return true
		}
	}
	return false
}

// subjectMatches reports whether NATS subscription subject sub matches
// literal subject subj.
func subjectMatches(sub, subj string) bool {
	st, lt := strings.Split(sub, "."), strings.Split(subj, ".")
	for i, tok := range st {
		switch {
		case tok == ">":
			return len(lt) > i
		case i >= len(lt):
			return false
		case tok != "*" && tok != lt[i]:
			return false
		}
	}
	return len(st) == len(lt)
}
