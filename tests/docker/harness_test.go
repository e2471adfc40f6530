// Package docker runs the cluster scenarios against the container image
// (cmd/walrus/Dockerfile) with the compose files of examples/docker, as an
// operator would: docker-compose up, docker stop/start, docker network
// disconnect/connect, and clients on the published host ports.
//
// The tests skip unless WALRUS_TEST_DOCKER=1 (`make test-docker` sets it):
// `make test-integration` runs `go test ./tests/...`, which includes this
// package, and CI must not need a Docker engine. With the variable set they
// still skip, saying why, when `docker info` or `docker-compose version`
// fails. They build the image once per test binary with `make image`.
//
// Every test runs its own compose project (its own containers, network and
// volumes) on free loopback host ports, so the fixed ports and container
// names of the example files (9091-9093, walrus-1..3) cannot collide with
// anything, and removes it with `docker-compose down -v --remove-orphans`
// when it ends, failed or not; a failed test first saves every container's
// log and prints the tail of each.
package docker

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walrus-edge/walrus/broker/protocol"
	"github.com/walrus-edge/walrus/tests/freeport"
	"github.com/walrus-edge/walrus/tests/testcluster"
)

const (
	// enableEnv must be "1" for the tests to run.
	enableEnv = "WALRUS_TEST_DOCKER"
	// keepLogsEnv "1" keeps the container logs of passing tests too.
	keepLogsEnv = "WALRUS_TEST_DOCKER_KEEP_LOGS"
	// patientHealEnv "1" makes TestDocker_Partition wait, after the heal,
	// until the cut-off node's NATS routes carry messages again and its
	// metadata has caught up before it writes and reads through it. By
	// default it does so as soon as Raft has taken the node back, which
	// found two bugs (both fixed, and guarded by this test since):
	//
	//   - Raft heartbeats reached the node before the log entries it had
	//     missed, so its lease was valid while its metadata still showed it
	//     leading the segment that was failed over: it acknowledged writes
	//     into that segment, which sorted ahead of older acknowledged
	//     writes (broker leaseValid now also needs a heartbeat answer whose
	//     Raft index it has applied).
	//   - Its NATS routes stalled after the heal; a GET through it whose
	//     forwarded cursor move timed out answered ERR, but the move was
	//     applied later: the entry was consumed and nobody got it (a GET
	//     now re-proposes the same move until it knows).
	patientHealEnv = "WALRUS_TEST_DOCKER_PATIENT_HEAL"
)

var (
	dockerOnce sync.Once
	dockerSkip string // why the tests skip, "" if Docker is usable

	imageOnce sync.Once
	imageErr  error
)

// requireDocker skips the test unless the tests are enabled and docker and
// docker-compose work, then builds the image (once).
func requireDocker(t *testing.T) {
	t.Helper()
	if os.Getenv(enableEnv) != "1" {
		t.Skipf("docker scenarios are opt-in: set %s=1 (make test-docker)", enableEnv)
	}
	dockerOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, probe := range [][]string{{"docker", "info"}, {"docker-compose", "version"}} {
			if out, err := exec.CommandContext(ctx, probe[0], probe[1:]...).CombinedOutput(); err != nil {
				dockerSkip = fmt.Sprintf("%s is not usable: %v", strings.Join(probe, " "), err)
				if o := strings.TrimSpace(string(out)); o != "" {
					dockerSkip += "\n" + lastLines(o, 5)
				}
				return
			}
		}
	})
	if dockerSkip != "" {
		t.Skip(dockerSkip)
	}
	imageOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "make", "image")
		cmd.Dir = moduleRoot()
		// Not the settings of a make that runs this test (make test-docker).
		cmd.Env = withoutEnv(os.Environ(), "MAKEFLAGS", "MAKELEVEL", "MFLAGS")
		start := time.Now()
		out, err := cmd.CombinedOutput()
		if err != nil {
			imageErr = fmt.Errorf("make image: %v\n%s", err, lastLines(string(out), 30))
			return
		}
		t.Logf("make image: %v", time.Since(start).Round(time.Millisecond))
	})
	if imageErr != nil {
		t.Fatal(imageErr)
	}
}

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func withoutEnv(env []string, names ...string) []string {
	return slices.DeleteFunc(slices.Clone(env), func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		return slices.Contains(names, k)
	})
}

// cluster is one compose project of examples/docker: docker-compose.yml
// with the test overlay docker-compose.test.yml.
type cluster struct {
	t       *testing.T
	project string // compose project, also the prefix of the container names
	env     []string
	// addr[i] is node i's native protocol port as the test overlay
	// publishes it (container port 909i), on the host's loopback.
	addr [4]string
	// nats[i] is node i's NATS client URL on the host.
	nats [4]string
}

// newCluster starts a 3-node cluster and waits until every node reports
// the full membership and a leader. The cluster is removed when the test
// ends.
func newCluster(t *testing.T, ctx context.Context) *cluster {
	t.Helper()
	requireDocker(t)
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	c := &cluster{t: t, project: "walrustest" + hex.EncodeToString(suffix)}
	ports := freeport.Get(t, 9)
	c.env = append(withoutEnv(os.Environ(), "COMPOSE_FILE", "COMPOSE_PROJECT_NAME"),
		"WALRUS_IMAGE=walrus:dev",
		"WALRUS_CONTAINER_PREFIX="+c.project,
	)
	for i := 1; i <= 3; i++ {
		// "ip:port" publishes on loopback only.
		c.env = append(c.env,
			fmt.Sprintf("WALRUS_CLIENT_PORT_%d=127.0.0.1:%d", i, ports[i-1]),
			fmt.Sprintf("WALRUS_NATS_PORT_%d=127.0.0.1:%d", i, ports[2+i]),
			fmt.Sprintf("WALRUS_NATS_ADVERTISE_%d=127.0.0.1:%d", i, ports[2+i]),
			fmt.Sprintf("WALRUS_TEST_CLIENT_PORT_%d=127.0.0.1:%d", i, ports[5+i]),
		)
		c.addr[i] = fmt.Sprintf("127.0.0.1:%d", ports[5+i])
		c.nats[i] = fmt.Sprintf("nats://127.0.0.1:%d", ports[2+i])
	}
	t.Cleanup(c.remove)
	start := time.Now()
	if out, err := c.compose(ctx, "up", "-d"); err != nil {
		t.Fatalf("docker-compose up: %v\n%s", err, out)
	}
	c.waitReady(ctx, 90*time.Second, 1, 2, 3)
	t.Logf("project %s: up and ready in %v", c.project, time.Since(start).Round(time.Millisecond))
	return c
}

// container returns node id's container name.
func (c *cluster) container(id int) string { return fmt.Sprintf("%s-%d", c.project, id) }

// network returns the compose network's name.
func (c *cluster) network() string { return c.project + "_walrus-net" }

// compose runs docker-compose on the project with the example files.
func (c *cluster) compose(ctx context.Context, args ...string) (string, error) {
	dir := filepath.Join(moduleRoot(), "examples", "docker")
	full := append([]string{"-p", c.project,
		"-f", filepath.Join(dir, "docker-compose.yml"),
		"-f", filepath.Join(dir, "docker-compose.test.yml")}, args...)
	return run(ctx, c.env, "docker-compose", full...)
}

// docker runs the docker CLI.
func (c *cluster) docker(ctx context.Context, args ...string) (string, error) {
	return run(ctx, c.env, "docker", args...)
}

func run(ctx context.Context, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	cmd.WaitDelay = 5 * time.Second // a killed docker-compose may leave its output open
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// remove saves and prints the logs of a failed test, then removes the
// project's containers, network and volumes.
func (c *cluster) remove() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c.checkRestarts(ctx)
	if c.t.Failed() || os.Getenv(keepLogsEnv) == "1" {
		c.dumpLogs(ctx)
	}
	out, err := c.compose(ctx, "down", "-v", "--remove-orphans", "-t", "10")
	if err == nil {
		return
	}
	c.t.Errorf("docker-compose down: %v\n%s", err, out)
	// Whatever down left behind, by the label compose puts on everything.
	label := "label=com.docker.compose.project=" + c.project
	if ids, _ := c.docker(ctx, "ps", "-aq", "--filter", label); strings.TrimSpace(ids) != "" {
		_, _ = c.docker(ctx, append([]string{"rm", "-f", "-v"}, strings.Fields(ids)...)...)
	}
	if ids, _ := c.docker(ctx, "network", "ls", "-q", "--filter", label); strings.TrimSpace(ids) != "" {
		_, _ = c.docker(ctx, append([]string{"network", "rm"}, strings.Fields(ids)...)...)
	}
	if ids, _ := c.docker(ctx, "volume", "ls", "-q", "--filter", label); strings.TrimSpace(ids) != "" {
		_, _ = c.docker(ctx, append([]string{"volume", "rm", "-f"}, strings.Fields(ids)...)...)
	}
}

// checkRestarts fails the test if Docker restarted a container: the
// compose file restarts a walrus that exited on its own, which is a crash
// or a node that gave up, never an accepted fault.
func (c *cluster) checkRestarts(ctx context.Context) {
	for id := 1; id <= 3; id++ {
		out, err := c.docker(ctx, "inspect", "-f", "{{.RestartCount}} {{.State.Status}} {{.State.ExitCode}}", c.container(id))
		if err != nil {
			continue // never created: up failed, which the test reported
		}
		var restarts, code int
		var status string
		if _, err := fmt.Sscan(out, &restarts, &status, &code); err != nil {
			c.t.Errorf("docker inspect %s: %q: %v", c.container(id), out, err)
			continue
		}
		if restarts > 0 {
			c.t.Errorf("%s: walrus exited on its own and Docker restarted it %d times (now %s, last exit code %d)",
				c.container(id), restarts, status, code)
		}
	}
}

// dumpLogs writes every container's whole log to a directory that is kept,
// and the last lines of each to the test log.
func (c *cluster) dumpLogs(ctx context.Context) {
	dir, err := os.MkdirTemp("", "walrus-docker-"+c.project+"-")
	if err != nil {
		c.t.Logf("keep logs: %v", err)
	}
	for id := 1; id <= 3; id++ {
		out, err := c.docker(ctx, "logs", "--timestamps", c.container(id))
		if err != nil {
			out += fmt.Sprintf("\n(docker logs: %v)", err)
		}
		if dir != "" {
			_ = os.WriteFile(filepath.Join(dir, c.container(id)+".log"), []byte(out), 0o644)
		}
		c.t.Logf("--- %s log (last 60 lines) ---\n%s", c.container(id), lastLines(out, 60))
	}
	if ps, err := c.compose(ctx, "ps"); err == nil {
		c.t.Logf("--- docker-compose ps ---\n%s", ps)
	}
	if dir != "" {
		c.t.Logf("whole container logs kept in %s", dir)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// metrics asks node id for METRICS through its published port.
func (c *cluster) metrics(ctx context.Context, id int) (testcluster.Metrics, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	cl, err := protocol.Dial(ctx, c.addr[id])
	if err != nil {
		return testcluster.Metrics{}, err
	}
	defer func() { _ = cl.Close() }()
	raw, err := cl.Metrics(ctx)
	if err != nil {
		return testcluster.Metrics{}, err
	}
	var m testcluster.Metrics
	return m, json.Unmarshal(raw, &m)
}

// waitReady waits until each of ids reports the same leader and all three
// nodes as voters.
func (c *cluster) waitReady(ctx context.Context, within time.Duration, ids ...int) {
	c.t.Helper()
	if _, err := c.poll(ctx, within, func() (string, bool) {
		leaders := map[uint64]bool{}
		for _, id := range ids {
			m, err := c.metrics(ctx, id)
			switch {
			case err != nil:
				return fmt.Sprintf("node %d: %v", id, err), false
			case m.CurrentLeader == nil:
				return fmt.Sprintf("node %d: no leader", id), false
			case len(m.MembershipConfig.Membership.Configs) == 0 || len(m.MembershipConfig.Membership.Configs[0]) != 3:
				return fmt.Sprintf("node %d: voters %v", id, m.MembershipConfig.Membership.Configs), false
			}
			leaders[*m.CurrentLeader] = true
		}
		if len(leaders) != 1 {
			return fmt.Sprintf("nodes %v disagree on the leader: %v", ids, leaders), false
		}
		return "", true
	}); err != nil {
		c.t.Fatalf("cluster not ready: %v", err)
	}
}

// leader returns the Raft leader as node id reports it.
func (c *cluster) leader(ctx context.Context, id int) (int, error) {
	m, err := c.metrics(ctx, id)
	if err != nil {
		return 0, err
	}
	if m.CurrentLeader == nil {
		return 0, errors.New("no leader")
	}
	return int(*m.CurrentLeader), nil
}

// poll calls cond every 200ms until it reports done, within or ctx ends;
// it returns how long that took, or an error with cond's last word.
func (c *cluster) poll(ctx context.Context, within time.Duration, cond func() (string, bool)) (time.Duration, error) {
	start := time.Now()
	deadline := start.Add(within)
	for {
		last, done := cond()
		if done {
			return time.Since(start), nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return time.Since(start), fmt.Errorf("not within %v: %s", within, last)
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// putOnce sends one PUT on a fresh connection. It reports whether the
// request may have reached the server: a failed dial means the write was
// certainly not made.
func putOnce(ctx context.Context, addr, topic, payload string, timeout time.Duration) (sent bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cl, err := protocol.Dial(ctx, addr, protocol.WithReconnect(false))
	if err != nil {
		return false, err
	}
	defer func() { _ = cl.Close() }()
	return true, cl.Put(ctx, topic, []byte(payload))
}

// cliPut runs walrus-cli inside node id's container against the node's own
// client port on the container's loopback, which works while the container
// is cut off from the network. It returns the CLI's output and whether it
// printed OK.
func (c *cluster) cliPut(ctx context.Context, id int, topic, payload string) (string, bool) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, err := c.docker(ctx, "exec", c.container(id), "walrus-cli", "--timeout", "8s",
		"--addr", fmt.Sprintf("127.0.0.1:%d", 9090+id), "put", topic, payload)
	return strings.TrimSpace(out), err == nil && strings.TrimSpace(out) == "OK"
}
