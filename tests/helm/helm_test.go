// Package helm checks the chart in helm/walrus without a Kubernetes cluster:
// it renders the chart with `helm template` for several value sets, parses
// the objects, and checks that they fit together (Services, container
// ports, probes, volumes) and that every pod's arguments, environment and
// config file load with the real walrus configuration loader (`walrus
// config check`, with the pod's host name) into the node the chart means:
// node id = ordinal + 1, advertised at its headless DNS name, joining
// through the others. The probe paths are requested from a running node.
//
// The tests need a helm binary: WALRUS_TEST_HELM names it (make test-helm
// installs a pinned one); without it they skip.
package helm

import (
	"bytes"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/walrus-edge/walrus/tests/testcluster"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testcluster.Cleanup()
	os.Exit(code)
}

// shutdownBound is cmd/walrus's bound on the graceful part of a node's
// shutdown (shutdownTimeout in cmd/walrus/node.go).
const shutdownBound = 30 * time.Second

// chart is one rendering and what the checks expect of it.
type chart struct {
	*manifest
	release, ns, fullname string
	replicas              int
	domain                string
	bootstrap             bool
	ports                 map[string]int // by container port name
}

// The default values: 3 nodes, the default ports, walrus-0 bootstraps.
func TestChart_Defaults(t *testing.T) {
	c := chart{
		manifest: render(t, "walrus", "edge"),
		release:  "walrus", ns: "edge", fullname: "walrus", replicas: 3, domain: "cluster.local", bootstrap: true,
		ports: map[string]int{"client": 8080, "raft": 6000, "nats": 4222, "nats-cluster": 6222, "http": 9090},
	}
	want := []string{"ConfigMap/walrus", "Pod/walrus-test", "PodDisruptionBudget/walrus", "Service/walrus",
		"Service/walrus-headless", "StatefulSet/walrus"}
	if got := c.kinds(); !slices.Equal(got, want) {
		t.Fatalf("objects %q, want %q", got, want)
	}
	c.check(t)
}

// Five nodes, other ports and another cluster domain: the values reach
// the flags, the Services, the probes and the join list.
func TestChart_FiveReplicasOtherPorts(t *testing.T) {
	c := chart{
		manifest: render(t, "prod", "msg", "--set", "replicaCount=5", "--set", "cluster.domain=k8s.example",
			"--set", "ports.client=7080,ports.raft=7000,ports.nats=5222,ports.natsCluster=7222,ports.http=7090"),
		release: "prod", ns: "msg", fullname: "prod-walrus", replicas: 5, domain: "k8s.example", bootstrap: true,
		ports: map[string]int{"client": 7080, "raft": 7000, "nats": 5222, "nats-cluster": 7222, "http": 7090},
	}
	c.check(t)
}

// After the first install: no node bootstraps, walrus-0 joins the others
// too (a lost volume is then refused instead of starting a second cluster).
func TestChart_BootstrapOff(t *testing.T) {
	c := chart{
		manifest: render(t, "walrus", "edge", "--set", "cluster.bootstrap=false"),
		release:  "walrus", ns: "edge", fullname: "walrus", replicas: 3, domain: "cluster.local", bootstrap: false,
		ports: map[string]int{"client": 8080, "raft": 6000, "nats": 4222, "nats-cluster": 6222, "http": 9090},
	}
	c.check(t)
}

// The ServiceMonitor scrapes /metrics on the HTTP port of every pod,
// through the headless Service only (one target per node).
func TestChart_ServiceMonitor(t *testing.T) {
	m := render(t, "walrus", "edge", "--set", "serviceMonitor.enabled=true", "--set", "serviceMonitor.labels.release=prom")
	if !slices.Contains(m.kinds(), "ServiceMonitor/walrus") {
		t.Fatalf("no ServiceMonitor in %q", m.kinds())
	}
	var sm serviceMonitor
	m.get("ServiceMonitor", "walrus", &sm)
	var headless, client service
	m.get("Service", "walrus-headless", &headless)
	m.get("Service", "walrus", &client)
	if sm.Metadata.Namespace != "edge" || sm.Metadata.Labels["release"] != "prom" ||
		!slices.Equal(sm.Spec.NamespaceSelector.MatchNames, []string{"edge"}) {
		t.Errorf("ServiceMonitor metadata %+v, namespaces %q", sm.Metadata, sm.Spec.NamespaceSelector.MatchNames)
	}
	if !subset(sm.Spec.Selector.MatchLabels, headless.Metadata.Labels) {
		t.Errorf("ServiceMonitor selector %v does not select the headless Service (labels %v)",
			sm.Spec.Selector.MatchLabels, headless.Metadata.Labels)
	}
	if subset(sm.Spec.Selector.MatchLabels, client.Metadata.Labels) {
		t.Errorf("ServiceMonitor selector %v also selects the client Service: every node would be scraped twice",
			sm.Spec.Selector.MatchLabels)
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Fatalf("endpoints %+v", sm.Spec.Endpoints)
	}
	var sts statefulSet
	m.get("StatefulSet", "walrus", &sts)
	port := sm.Spec.Endpoints[0].Port
	if svcPort, ok := servicePort(headless, port); !ok || svcPort != containerPort(sts.Spec.Template.Spec.Containers[0], "http") {
		t.Errorf("ServiceMonitor port %q is not the headless Service's HTTP port", port)
	}
	// Off by default.
	if slices.ContainsFunc(render(t, "walrus", "edge").kinds(), func(k string) bool { return strings.HasPrefix(k, "ServiceMonitor/") }) {
		t.Error("a ServiceMonitor by default")
	}
}

// Values that would render a broken cluster are refused with a reason.
func TestChart_RefusesBadValues(t *testing.T) {
	for _, tc := range []struct {
		set  []string
		want string
	}{
		{[]string{"config.node-id=2"}, "config.node-id is set by the chart"},
		{[]string{"config.join=x:6000"}, "config.join is set by the chart"},
		{[]string{"config.http-port=1"}, "config.http-port is set by the chart"},
		{[]string{"replicaCount=0"}, "replicaCount must be at least 1"},
		{[]string{"ports.http=0"}, "ports.http must be a port number"},
		{[]string{"ports.http=8080"}, "every port must be different"},
	} {
		var flags []string
		for _, s := range tc.set {
			flags = append(flags, "--set", s)
		}
		_, err := helmTemplate(t, "walrus", "edge", flags...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--set %q: %v; want an error mentioning %q", tc.set, err, tc.want)
		}
	}
}

// check runs every check of a rendering.
func (c chart) check(t *testing.T) {
	t.Helper()
	var sts statefulSet
	c.get("StatefulSet", c.fullname, &sts)
	var headless, client service
	c.get("Service", c.fullname+"-headless", &headless)
	c.get("Service", c.fullname, &client)
	pod := sts.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("containers: %d", len(pod.Containers))
	}
	ctr := pod.Containers[0]

	// The StatefulSet and its Services.
	if sts.Spec.Replicas != c.replicas || sts.Spec.PodManagementPolicy != "Parallel" ||
		sts.Spec.ServiceName != headless.Metadata.Name {
		t.Errorf("StatefulSet: replicas %d, policy %q, serviceName %q", sts.Spec.Replicas,
			sts.Spec.PodManagementPolicy, sts.Spec.ServiceName)
	}
	if !subset(sts.Spec.Selector.MatchLabels, sts.Spec.Template.Metadata.Labels) {
		t.Errorf("selector %v does not select the pod labels %v", sts.Spec.Selector.MatchLabels, sts.Spec.Template.Metadata.Labels)
	}
	for _, svc := range []service{headless, client} {
		if !maps.Equal(svc.Spec.Selector, sts.Spec.Selector.MatchLabels) {
			t.Errorf("Service %s selects %v, the StatefulSet's pods are %v", svc.Metadata.Name, svc.Spec.Selector,
				sts.Spec.Selector.MatchLabels)
		}
	}
	if headless.Spec.ClusterIP != "None" || !headless.Spec.PublishNotReadyAddresses {
		t.Errorf("headless Service: clusterIP %q, publishNotReadyAddresses %v", headless.Spec.ClusterIP,
			headless.Spec.PublishNotReadyAddresses)
	}
	if client.Spec.Type != "ClusterIP" || client.Spec.PublishNotReadyAddresses {
		t.Errorf("client Service: type %q, publishNotReadyAddresses %v", client.Spec.Type, client.Spec.PublishNotReadyAddresses)
	}
	// Container ports are the values; every Service port reaches the
	// container port of the same number.
	for name, want := range c.ports {
		if got := containerPort(ctr, name); got != want {
			t.Errorf("container port %s = %d, want %d", name, got, want)
		}
	}
	for _, svc := range []service{headless, client} {
		for _, p := range svc.Spec.Ports {
			if target := containerPort(ctr, p.TargetPort); target == 0 || target != p.Port {
				t.Errorf("Service %s port %s: %d → target %q (container port %d)", svc.Metadata.Name, p.Name, p.Port,
					p.TargetPort, target)
			}
		}
	}
	for _, want := range []string{"raft", "nats-cluster"} {
		if _, ok := servicePort(headless, want); !ok {
			t.Errorf("the headless Service lacks the peer port %s", want)
		}
	}
	for _, want := range []string{"client", "nats"} {
		if p, ok := servicePort(client, want); !ok || p != c.ports[want] {
			t.Errorf("the client Service's %s port = %d, want %d", want, p, c.ports[want])
		}
	}

	// Probes: on the HTTP port, at the node's health paths.
	for name, want := range map[string]struct {
		p    *probe
		path string
	}{
		"startup": {ctr.StartupProbe, "/healthz"}, "liveness": {ctr.LivenessProbe, "/healthz"},
		"readiness": {ctr.ReadinessProbe, "/readyz"},
	} {
		if want.p == nil || want.p.HTTPGet == nil {
			t.Errorf("no HTTP %s probe", name)
			continue
		}
		if port := containerPort(ctr, want.p.HTTPGet.Port); port != c.ports["http"] || want.p.HTTPGet.Path != want.path {
			t.Errorf("%s probe: %s on port %q (%d); want %s on the HTTP port %d", name, want.p.HTTPGet.Path,
				want.p.HTTPGet.Port, port, want.path, c.ports["http"])
		}
	}

	// Pod settings the node depends on.
	if pod.EnableServiceLinks == nil || *pod.EnableServiceLinks {
		t.Error("enableServiceLinks is not false: Services named walrus-* would inject WALRUS_* settings")
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("automountServiceAccountToken is not false")
	}
	if sc := pod.SecurityContext; sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0 ||
		sc.FSGroup == nil {
		t.Errorf("pod securityContext %+v: want runAsNonRoot, a numeric non-root runAsUser and an fsGroup", sc)
	}
	if sc := ctr.SecurityContext; sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("container securityContext %+v", sc)
	}
	if grace := time.Duration(pod.TerminationGracePeriodSeconds) * time.Second; grace < shutdownBound+10*time.Second {
		t.Errorf("terminationGracePeriodSeconds %v: the node's clean shutdown may take %v", grace, shutdownBound)
	}
	var pdb podDisruptionBudget
	c.get("PodDisruptionBudget", c.fullname, &pdb)
	if pdb.Spec.MaxUnavailable == nil || *pdb.Spec.MaxUnavailable != 1 || pdb.Spec.MinAvailable != nil ||
		!maps.Equal(pdb.Spec.Selector.MatchLabels, sts.Spec.Selector.MatchLabels) {
		t.Errorf("PodDisruptionBudget %+v", pdb.Spec)
	}

	// Volumes: /data is the claim template, the config file the ConfigMap.
	mounts := map[string]string{} // mount path → volume
	for _, vm := range ctr.VolumeMounts {
		mounts[vm.MountPath] = vm.Name
	}
	if len(sts.Spec.VolumeClaimTemplates) != 1 || mounts["/data"] != sts.Spec.VolumeClaimTemplates[0].Metadata.Name ||
		sts.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests["storage"] == "" {
		t.Errorf("/data is not the volume claim template (mounts %v)", mounts)
	}
	configFile := c.configFile(t, ctr, pod, mounts)

	// Every pod's configuration, through the real loader.
	c.checkPods(t, ctr, configFile)
}

// configFile finds the --config argument, the ConfigMap mounted there, and
// writes the file the node would read into a temporary directory.
func (c chart) configFile(t *testing.T, ctr container, pod podSpec, mounts map[string]string) (arg [2]string) {
	t.Helper()
	var path string
	for _, a := range ctr.Args {
		if v, ok := strings.CutPrefix(a, "--config="); ok {
			path = v
		}
	}
	if path == "" {
		t.Fatalf("no --config=<path> in the args %q", ctr.Args)
	}
	dir, key := filepath.Split(path)
	vol := mounts[filepath.Clean(dir)]
	var cmName string
	for _, v := range pod.Volumes {
		if v.Name == vol && v.ConfigMap != nil {
			cmName = v.ConfigMap.Name
		}
	}
	if cmName == "" {
		t.Fatalf("--config=%s: no ConfigMap mounted at %s (mounts %v)", path, dir, mounts)
	}
	var cm configMap
	c.get("ConfigMap", cmName, &cm)
	data, ok := cm.Data[key]
	if !ok {
		t.Fatalf("ConfigMap %s has no %s (keys %v)", cmName, key, slices.Collect(maps.Keys(cm.Data)))
	}
	local := filepath.Join(t.TempDir(), key)
	if err := os.WriteFile(local, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return [2]string{"--config=" + path, "--config=" + local}
}

// checkPods checks each pod's effective configuration (configCheck): the
// node id, addresses, ports, join list and bootstrap the chart means.
func (c chart) checkPods(t *testing.T, ctr container, configArg [2]string) {
	t.Helper()
	if len(ctr.Args) == 0 || ctr.Args[0] != "run" {
		t.Fatalf("args %q do not start with run", ctr.Args)
	}
	if !slices.Contains(ctr.Args, "--node-id-from-hostname") {
		t.Errorf("args %q: the node id is not derived from the host name", ctr.Args)
	}
	for _, a := range ctr.Args {
		if strings.HasPrefix(a, "--node-id=") || a == "--node-id" {
			t.Errorf("args %q set --node-id: the pods share one template", ctr.Args)
		}
	}
	headless := c.fullname + "-headless"
	podHost := func(i int) string {
		return fmt.Sprintf("%s-%d.%s.%s.svc.%s", c.fullname, i, headless, c.ns, c.domain)
	}
	for i := range c.replicas {
		podName := fmt.Sprintf("%s-%d", c.fullname, i)
		stdout := c.configCheck(t, ctr, configArg, i)
		var eff struct {
			NodeID            uint64 `yaml:"node-id"`
			BootstrapNodeID   uint64 `yaml:"bootstrap-node-id"`
			BootstrapExpect   int    `yaml:"bootstrap-expect"`
			Join              string `yaml:"join"`
			DataDir           string `yaml:"data-dir"`
			RaftHost          string `yaml:"raft-host"`
			ClientHost        string `yaml:"client-host"`
			RaftAdvertiseHost string `yaml:"raft-advertise-host"`
			RaftPort          int    `yaml:"raft-port"`
			ClientPort        int    `yaml:"client-port"`
			NATSPort          int    `yaml:"nats-port"`
			NATSClusterPort   int    `yaml:"nats-cluster-port"`
			HTTPPort          int    `yaml:"http-port"`
			LogFile           string `yaml:"log-file"`
		}
		if err := yaml.Unmarshal(stdout, &eff); err != nil {
			t.Fatalf("pod %s: config check output: %v\n%s", podName, err, stdout)
		}
		fail := func(format string, args ...any) {
			t.Helper()
			t.Errorf("pod %s: "+format+"\n%s", append([]any{podName}, append(args, stdout)...)...)
		}
		if eff.NodeID != uint64(i+1) {
			fail("node id %d, want %d", eff.NodeID, i+1)
		}
		if eff.DataDir != "/data" || eff.LogFile != "" { // the only writable mount (read-only root file system)
			fail("data dir %q, log file %q: the node would write outside /data", eff.DataDir, eff.LogFile)
		}
		if eff.RaftHost != "0.0.0.0" || eff.ClientHost != "0.0.0.0" {
			fail("listens on raft %s, client %s: not reachable through the pod's IP", eff.RaftHost, eff.ClientHost)
		}
		if eff.RaftAdvertiseHost != podHost(i) {
			fail("advertises %q, want its headless DNS name %q", eff.RaftAdvertiseHost, podHost(i))
		}
		for name, got := range map[string]int{"raft": eff.RaftPort, "client": eff.ClientPort, "nats": eff.NATSPort,
			"nats-cluster": eff.NATSClusterPort, "http": eff.HTTPPort} {
			if got != c.ports[name] {
				fail("%s port %d, but the container port and the Services say %d", name, got, c.ports[name])
			}
		}
		// The NATS routes advertise the same name, on the route port.
		route := fmt.Sprintf("advertised nats-route://%s:%d)", podHost(i), c.ports["nats-cluster"])
		if !bytes.Contains(stdout, []byte(route)) {
			fail("the NATS route URL is not %q", route)
		}
		// The join list names every other pod; the node skips its own.
		self := net.JoinHostPort(podHost(i), strconv.Itoa(c.ports["raft"]))
		var others, want []string
		for _, a := range strings.Split(eff.Join, ",") {
			if a != self {
				others = append(others, a)
			}
		}
		for j := range c.replicas {
			if j != i {
				want = append(want, net.JoinHostPort(podHost(j), strconv.Itoa(c.ports["raft"])))
			}
		}
		if !slices.Equal(others, want) {
			fail("joins through %q, want the other pods %q", others, want)
		}
		start := "else it joins through " + strings.Join(want, ", ") + "\n"
		switch {
		case c.bootstrap && c.replicas > 1:
			// Every pod: bootstrap only if all are new, and only walrus-0.
			start = fmt.Sprintf("else it joins through %s, or bootstraps a new cluster if %d nodes, this one included, "+
				"are new and this one has the lowest id\n", strings.Join(want, ", "), c.replicas)
			if eff.BootstrapExpect != c.replicas || eff.BootstrapNodeID != 0 {
				fail("bootstrap expect %d, bootstrap node id %d; want %d and 0", eff.BootstrapExpect, eff.BootstrapNodeID, c.replicas)
			}
		case c.bootstrap:
			start = "else it bootstraps a new cluster\n"
			if eff.BootstrapNodeID != 1 {
				fail("bootstrap node id %d, want 1", eff.BootstrapNodeID)
			}
		case eff.BootstrapNodeID != 0 || eff.BootstrapExpect != 0:
			fail("bootstrap node id %d, expect %d with cluster.bootstrap=false", eff.BootstrapNodeID, eff.BootstrapExpect)
		case c.replicas == 1:
			start = "else it fails: --join names only this node\n"
		}
		if !bytes.Contains(stdout, []byte("# start: from its raft state if it has some, "+start)) {
			fail("start: want %q", start)
		}
	}
}

// configCheck runs `walrus config check` as pod i would run `walrus run`:
// the image's environment, the pod's env with $(VAR) expanded (POD_NAME and
// POD_NAMESPACE from the downward API), the args with the config file's
// path pointing at the rendered ConfigMap, and the pod's host name. It
// returns the output (the effective settings as YAML); a warning about a
// setting that is not a flag fails the test.
func (c chart) configCheck(t *testing.T, ctr container, configArg [2]string, i int) []byte {
	t.Helper()
	walrus := filepath.Join(testcluster.Binaries(t), "walrus")
	podName := fmt.Sprintf("%s-%d", c.fullname, i)
	vars := map[string]string{}
	env := imageEnv(t)
	for _, e := range ctr.Env {
		if strings.HasPrefix(e.Name, "WALRUS_NODE_ID") {
			t.Errorf("env sets %s: the pods share one template", e.Name)
		}
		v := expand(e.Value, vars)
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			switch e.ValueFrom.FieldRef.FieldPath {
			case "metadata.name":
				v = podName
			case "metadata.namespace":
				v = c.ns
			default:
				t.Fatalf("env %s: field %s is not simulated here", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
		}
		vars[e.Name] = v
		env = append(env, e.Name+"="+v)
	}
	args := []string{"config", "check", "--hostname", podName}
	for _, a := range ctr.Args[1:] {
		a = expand(a, vars)
		if a == configArg[0] {
			a = configArg[1]
		}
		args = append(args, a)
	}
	cmd := exec.Command(walrus, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("pod %s: walrus %q: %v\n%s", podName, args, err, stderr.String())
	}
	if stderr.Len() != 0 { // settings of the config file or env that are not flags
		t.Errorf("pod %s: walrus config check warns:\n%s", podName, stderr.String())
	}
	return stdout.Bytes()
}

// containerPort returns the number of the container port named name (or
// name itself when it is a number), or 0.
func containerPort(ctr container, name string) int {
	for _, p := range ctr.Ports {
		if p.Name == name || strconv.Itoa(p.ContainerPort) == name {
			return p.ContainerPort
		}
	}
	return 0
}

// servicePort returns the port of svc named name.
func servicePort(svc service, name string) (int, bool) {
	for _, p := range svc.Spec.Ports {
		if p.Name == name {
			return p.Port, true
		}
	}
	return 0, false
}

// subset reports whether every label of sel is in labels.
func subset(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}
