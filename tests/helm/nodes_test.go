package helm

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/walrus-edge/walrus/tests/freeport"
	"github.com/walrus-edge/walrus/tests/testcluster"
)

// The probe paths answer 200 on a running node started from a pod's
// effective configuration, and SIGTERM stops it well within the pod's
// termination grace period.
func TestChart_ProbesAnswerOnARunningNode(t *testing.T) {
	r := load(t, "walrus", "edge", 1)
	n := r.start(t, 0, t.TempDir(), []podPorts{newPodPorts(t)})
	defer n.kill()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, p := range []*probe{r.ctr.StartupProbe, r.ctr.ReadinessProbe, r.ctr.LivenessProbe} {
		n.waitOK(t, ctx, p.HTTPGet.Path)
	}
	grace := time.Duration(r.sts.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second
	took := n.stop(t, grace)
	t.Logf("clean shutdown in %v (grace period %v)", took.Round(time.Millisecond), grace)
	if !strings.Contains(n.logs.String(), `"msg":"node stopped"`) {
		t.Errorf("no JSON log line of a clean stop (the config file sets log-format json):\n%s", n.logs.String())
	}
}

// The start-up rules the chart's README documents, with the pods' own
// effective configurations (on loopback, since the pods' names do not
// resolve here): all pods started at once form one cluster, walrus-0
// bootstrapping it; a whole-cluster restart restarts every node from its
// state, although the pods still have --bootstrap-expect; and a walrus-0
// whose volume was lost is refused instead of starting a second cluster,
// with the chart's values unchanged, while the others carry on.
func TestChart_BootstrapRestartAndLostVolume(t *testing.T) {
	const replicas = 3
	r := load(t, "walrus", "edge", replicas)
	ports := make([]podPorts, replicas)
	dirs := make([]string, replicas)
	for i := range replicas {
		ports[i], dirs[i] = newPodPorts(t), t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	startAll := func() []*node {
		nodes := make([]*node, replicas)
		for i := range replicas { // at once, as podManagementPolicy Parallel does
			nodes[i] = r.start(t, i, dirs[i], ports)
			t.Cleanup(nodes[i].kill)
		}
		for _, n := range nodes {
			n.waitOK(t, ctx, "/readyz")
		}
		return nodes
	}

	nodes := startAll()
	for i, want := range []string{"bootstrapping a new cluster", "joining", "joining"} {
		if !strings.Contains(nodes[i].logs.String(), want) {
			t.Errorf("first start: pod %d's log lacks %q:\n%s", i, want, nodes[i].logs.String())
		}
	}

	for _, n := range nodes {
		n.stop(t, time.Minute)
	}
	nodes = startAll()
	for i, n := range nodes {
		if logs := n.logs.String(); !strings.Contains(logs, "restarting from existing raft state") ||
			strings.Contains(logs, "bootstrapping") || strings.Contains(logs, "joining") {
			t.Errorf("whole-cluster restart: pod %d did not restart from its state:\n%s", i, logs)
		}
	}

	// walrus-0 loses its volume; the values are those of the install.
	nodes[0].stop(t, time.Minute)
	if err := os.RemoveAll(dirs[0]); err != nil {
		t.Fatal(err)
	}
	lost := r.start(t, 0, dirs[0], ports)
	t.Cleanup(lost.kill)
	select {
	case err := <-lost.exited:
		lost.done = true
		if err == nil || !strings.Contains(lost.logs.String(), "node id is registered with another data directory") {
			t.Errorf("walrus-0 with a new volume: exit %v; want a refusal:\n%s", err, lost.logs.String())
		}
	case <-ctx.Done():
		t.Fatalf("walrus-0 with a new volume is still running:\n%s", lost.logs.String())
	}
	for _, n := range nodes[1:] {
		n.waitOK(t, ctx, "/readyz")
	}
}

// rendered is a chart rendering, for running its pods' nodes here.
type rendered struct {
	chart
	sts       statefulSet
	ctr       container
	configArg [2]string
}

func load(t *testing.T, release, ns string, replicas int, flags ...string) rendered {
	t.Helper()
	fullname := release
	if !strings.Contains(release, "walrus") {
		fullname = release + "-walrus"
	}
	r := rendered{chart: chart{
		manifest: render(t, release, ns, append(flags, "--set", "replicaCount="+strconv.Itoa(replicas))...),
		release:  release, ns: ns, fullname: fullname, replicas: replicas,
	}}
	r.get("StatefulSet", fullname, &r.sts)
	r.ctr = r.sts.Spec.Template.Spec.Containers[0]
	mounts := map[string]string{}
	for _, vm := range r.ctr.VolumeMounts {
		mounts[vm.MountPath] = vm.Name
	}
	r.configArg = r.configFile(t, r.ctr, r.sts.Spec.Template.Spec, mounts)
	return r
}

// podPorts are a pod's ports here, on loopback.
type podPorts struct{ raft, client, nats, natsCluster, http int }

func newPodPorts(t *testing.T) podPorts {
	p := freeport.Get(t, 5)
	return podPorts{p[0], p[1], p[2], p[3], p[4]}
}

// node is one walrus process.
type node struct {
	pod      int
	cmd      *exec.Cmd
	logs     *lockedBuffer
	exited   chan error
	done     bool // exited has been received from
	httpAddr string
}

// start runs pod i's node from its effective configuration (walrus config
// check as the pod), moved to loopback: the data directory, listen and
// advertised addresses and ports are overridden, and the join list's pod
// names are mapped to the pods' ports here.
func (r rendered) start(t *testing.T, i int, dataDir string, ports []podPorts) *node {
	t.Helper()
	eff := r.configCheck(t, r.ctr, r.configArg, i)
	var settings struct {
		Join string `yaml:"join"`
	}
	if err := yaml.Unmarshal(eff, &settings); err != nil {
		t.Fatal(err)
	}
	var join []string
	for _, a := range strings.Split(settings.Join, ",") {
		host, _, _ := net.SplitHostPort(a)
		name, _, _ := strings.Cut(host, ".")
		j, err := strconv.Atoi(strings.TrimPrefix(name, r.fullname+"-"))
		if err != nil || j >= len(ports) {
			t.Fatalf("join address %q is not one of the pods", a)
		}
		join = append(join, net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[j].raft)))
	}
	file := filepath.Join(t.TempDir(), "effective.yaml")
	if err := os.WriteFile(file, eff, 0o644); err != nil {
		t.Fatal(err)
	}
	p := ports[i]
	cmd := exec.Command(filepath.Join(testcluster.Binaries(t), "walrus"), "run", "--config", file,
		"--data-dir", dataDir, "--raft-host", "127.0.0.1", "--client-host", "127.0.0.1", "--raft-advertise-host", "127.0.0.1",
		"--raft-port", strconv.Itoa(p.raft), "--client-port", strconv.Itoa(p.client), "--nats-port", strconv.Itoa(p.nats),
		"--nats-cluster-port", strconv.Itoa(p.natsCluster), "--http-port", strconv.Itoa(p.http),
		"--join", strings.Join(join, ","))
	cmd.Env = []string{} // not this process's WALRUS_* variables
	n := &node{pod: i, cmd: cmd, logs: &lockedBuffer{}, exited: make(chan error, 1),
		httpAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(p.http))}
	cmd.Stdout, cmd.Stderr = n.logs, n.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { n.exited <- cmd.Wait() }()
	return n
}

// waitOK waits until GET path answers 200.
func (n *node) waitOK(t *testing.T, ctx context.Context, path string) {
	t.Helper()
	url := "http://" + n.httpAddr + path
	for {
		code, err := get(ctx, url)
		if code == http.StatusOK {
			return
		}
		select {
		case err := <-n.exited:
			n.done = true
			t.Fatalf("pod %d exited (%v):\n%s", n.pod, err, n.logs.String())
		case <-ctx.Done():
			t.Fatalf("pod %d: GET %s: %d, %v; its log:\n%s", n.pod, url, code, err, n.logs.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM and waits for a clean exit within grace; it returns
// how long the node took.
func (n *node) stop(t *testing.T, grace time.Duration) time.Duration {
	t.Helper()
	began := time.Now()
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-n.exited:
		n.done = true
		if err != nil {
			t.Fatalf("pod %d: exit after SIGTERM: %v\n%s", n.pod, err, n.logs.String())
		}
	case <-time.After(grace):
		t.Fatalf("pod %d: still running %v after SIGTERM:\n%s", n.pod, grace, n.logs.String())
	}
	return time.Since(began)
}

// kill ends the process if it still runs.
func (n *node) kill() {
	if !n.done {
		_ = n.cmd.Process.Kill()
		<-n.exited
		n.done = true
	}
}

func get(ctx context.Context, url string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// lockedBuffer is a bytes.Buffer a process writes while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
