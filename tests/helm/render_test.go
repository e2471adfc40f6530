package helm

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The parts of the Kubernetes objects the tests read. Field names follow the
// API (yaml tags); everything else in a document is ignored.

type meta struct {
	Name        string            `yaml:"name"`
	Namespace   string            `yaml:"namespace"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type object struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   meta   `yaml:"metadata"`
}

type statefulSet struct {
	Metadata meta `yaml:"metadata"`
	Spec     struct {
		ServiceName         string `yaml:"serviceName"`
		Replicas            int    `yaml:"replicas"`
		PodManagementPolicy string `yaml:"podManagementPolicy"`
		Selector            struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata meta    `yaml:"metadata"`
			Spec     podSpec `yaml:"spec"`
		} `yaml:"template"`
		VolumeClaimTemplates []struct {
			Metadata meta `yaml:"metadata"`
			Spec     struct {
				AccessModes []string `yaml:"accessModes"`
				Resources   struct {
					Requests map[string]string `yaml:"requests"`
				} `yaml:"resources"`
			} `yaml:"spec"`
		} `yaml:"volumeClaimTemplates"`
	} `yaml:"spec"`
}

type podSpec struct {
	EnableServiceLinks            *bool `yaml:"enableServiceLinks"`
	AutomountServiceAccountToken  *bool `yaml:"automountServiceAccountToken"`
	TerminationGracePeriodSeconds int   `yaml:"terminationGracePeriodSeconds"`
	SecurityContext               struct {
		RunAsNonRoot *bool `yaml:"runAsNonRoot"`
		RunAsUser    *int  `yaml:"runAsUser"`
		FSGroup      *int  `yaml:"fsGroup"`
	} `yaml:"securityContext"`
	Containers []container `yaml:"containers"`
	Volumes    []struct {
		Name      string `yaml:"name"`
		ConfigMap *struct {
			Name string `yaml:"name"`
		} `yaml:"configMap"`
	} `yaml:"volumes"`
}

type container struct {
	Name    string   `yaml:"name"`
	Image   string   `yaml:"image"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Env     []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			FieldRef *struct {
				FieldPath string `yaml:"fieldPath"`
			} `yaml:"fieldRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	StartupProbe    *probe `yaml:"startupProbe"`
	LivenessProbe   *probe `yaml:"livenessProbe"`
	ReadinessProbe  *probe `yaml:"readinessProbe"`
	SecurityContext struct {
		ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		ReadOnly  bool   `yaml:"readOnly"`
	} `yaml:"volumeMounts"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port string `yaml:"port"` // a port name or number
	} `yaml:"httpGet"`
}

type service struct {
	Metadata meta `yaml:"metadata"`
	Spec     struct {
		Type                     string            `yaml:"type"`
		ClusterIP                string            `yaml:"clusterIP"`
		PublishNotReadyAddresses bool              `yaml:"publishNotReadyAddresses"`
		Selector                 map[string]string `yaml:"selector"`
		Ports                    []struct {
			Name       string `yaml:"name"`
			Port       int    `yaml:"port"`
			TargetPort string `yaml:"targetPort"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

type configMap struct {
	Metadata meta              `yaml:"metadata"`
	Data     map[string]string `yaml:"data"`
}

type podDisruptionBudget struct {
	Metadata meta `yaml:"metadata"`
	Spec     struct {
		MaxUnavailable *int `yaml:"maxUnavailable"`
		MinAvailable   *int `yaml:"minAvailable"`
		Selector       struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
	} `yaml:"spec"`
}

type serviceMonitor struct {
	Metadata meta `yaml:"metadata"`
	Spec     struct {
		NamespaceSelector struct {
			MatchNames []string `yaml:"matchNames"`
		} `yaml:"namespaceSelector"`
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Endpoints []struct {
			Port string `yaml:"port"`
			Path string `yaml:"path"`
		} `yaml:"endpoints"`
	} `yaml:"spec"`
}

// manifest is a rendered chart: each document with its kind and name, and
// its YAML to decode into one of the types above.
type manifest struct {
	t    *testing.T
	docs []doc
}

type doc struct {
	object
	node yaml.Node
}

// helmBin returns the helm binary WALRUS_TEST_HELM names, or skips.
func helmBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("WALRUS_TEST_HELM")
	if bin == "" {
		t.Skip("WALRUS_TEST_HELM is not set: it names the helm binary these tests render the chart with " +
			"(make test-helm installs helm v3.22.0 into ./bin and sets it)")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("WALRUS_TEST_HELM: %v", err)
	}
	return bin
}

// chartDir is helm/walrus in this repository.
func chartDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "helm", "walrus")
}

// helmTemplate runs helm template for the release in namespace ns with
// extra flags (--set ...), against Kubernetes 1.30, and returns its
// output and error.
func helmTemplate(t *testing.T, release, ns string, flags ...string) ([]byte, error) {
	t.Helper()
	args := append([]string{"template", release, chartDir(), "--namespace", ns, "--kube-version", "1.30.0"}, flags...)
	cmd := exec.Command(helmBin(t), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, errors.New(strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// render renders the chart and parses every document.
func render(t *testing.T, release, ns string, flags ...string) *manifest {
	t.Helper()
	out, err := helmTemplate(t, release, ns, flags...)
	if err != nil {
		t.Fatalf("helm template %s %q: %v", release, flags, err)
	}
	m := &manifest{t: t}
	dec := yaml.NewDecoder(bytes.NewReader(out))
	for {
		var d doc
		err := dec.Decode(&d.node)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("helm template output: %v\n%s", err, out)
		}
		if d.node.Kind == 0 { // an empty document
			continue
		}
		if err := d.node.Decode(&d.object); err != nil {
			t.Fatalf("helm template output: %v", err)
		}
		if d.Kind == "" || d.Metadata.Name == "" {
			t.Fatalf("a document without kind or name: %+v", d.object)
		}
		m.docs = append(m.docs, d)
	}
	return m
}

// kinds lists "Kind/name" of every document, sorted.
func (m *manifest) kinds() []string {
	var out []string
	for _, d := range m.docs {
		out = append(out, d.Kind+"/"+d.Metadata.Name)
	}
	slices.Sort(out)
	return out
}

// get decodes the one document of kind and name into v.
func (m *manifest) get(kind, name string, v any) {
	m.t.Helper()
	for _, d := range m.docs {
		if d.Kind == kind && d.Metadata.Name == name {
			if err := d.node.Decode(v); err != nil {
				m.t.Fatalf("%s/%s: %v", kind, name, err)
			}
			return
		}
	}
	m.t.Fatalf("no %s/%s in %q", kind, name, m.kinds())
}

// expand replaces $(NAME) in s as the kubelet does in env values and args:
// with the value of a variable defined earlier, $$ is a literal $, and a
// reference to an unknown variable stays as written.
func expand(s string, vars map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
			continue
		case '(':
			if end := strings.IndexByte(s[i+2:], ')'); end >= 0 {
				name := s[i+2 : i+2+end]
				if v, ok := vars[name]; ok {
					b.WriteString(v)
				} else {
					b.WriteString(s[i : i+3+end])
				}
				i += 2 + end
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// imageEnv returns the environment cmd/walrus/Dockerfile sets in the image
// (ENV lines), which the pod's env overrides by name and the flags override
// as settings. It returns nil if there is no Dockerfile.
func imageEnv(t *testing.T) []string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "cmd", "walrus", "Dockerfile"))
	if errors.Is(err, os.ErrNotExist) {
		t.Log("no cmd/walrus/Dockerfile: checking without the image's environment")
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var env []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	inEnv := false // on a continuation line of an ENV instruction
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !inEnv {
			rest, ok := strings.CutPrefix(line, "ENV ")
			if !ok {
				continue
			}
			line = rest
		}
		cont := strings.HasSuffix(line, `\`)
		for _, kv := range strings.Fields(strings.TrimSuffix(line, `\`)) {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				t.Fatalf("Dockerfile: ENV %q: only the KEY=VALUE form is understood here", line)
			}
			env = append(env, k+"="+strings.Trim(v, `"`))
		}
		inEnv = cont
	}
	return env
}
