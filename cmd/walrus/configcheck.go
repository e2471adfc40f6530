package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"reflect"
	"strconv"
	"strings"

	"github.com/knadh/koanf/parsers/yaml"
)

const configUsage = `usage: walrus config check [flags of walrus run] [--hostname NAME]

Loads a node's configuration exactly as 'walrus run' does (defaults < --config
file < WALRUS_* environment < flags), validates it, and prints what the node
would do and the effective settings as a YAML file that --config accepts (the
node id resolved, leafnode passwords redacted). What run would ignore is
reported on stderr: settings of the file or the environment that are not
flags, and settings of the file that a WALRUS_* variable overrides. It
reads the --config file (and checks that a leafnode credentials file is
readable) but binds no port and writes no file. Exit 0: valid; 2: invalid.

  --hostname NAME   the host name --node-id-from-hostname reads (default: this
                    host's), to check a StatefulSet pod's configuration elsewhere
`

// runConfig implements `walrus config check`.
func runConfig(args, environ []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "check" {
		fmt.Fprint(stderr, configUsage)
		return 2
	}
	args = args[1:]
	hostname := os.Hostname
	if name, rest, ok := hostnameArg(args); ok {
		if name == "" {
			fmt.Fprint(stderr, "walrus config check: --hostname needs a value\n"+configUsage)
			return 2
		}
		hostname = func() (string, error) { return name, nil }
		args = rest
	}
	c, err := loadConfig(args, environ, stderr, hostname)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stderr, configUsage)
		return 0
	}
	if err == nil {
		err = c.checkLog()
	}
	if err == nil {
		_, err = c.brokerConfig(nil)
	}
	if err != nil {
		fmt.Fprintln(stderr, "walrus config check:", err)
		return 2
	}
	for _, w := range c.ignored {
		fmt.Fprintln(stderr, "walrus config check: warning: ignored:", w)
	}
	if err := writeConfigReport(stdout, c, hostname); err != nil {
		fmt.Fprintln(stderr, "walrus config check:", err)
		return 1
	}
	return 0
}

// hostnameArg takes --hostname NAME (or --hostname=NAME, with one or two
// dashes) out of args, wherever it is.
func hostnameArg(args []string) (name string, rest []string, ok bool) {
	for i, arg := range args {
		a := strings.TrimPrefix(strings.TrimPrefix(arg, "-"), "-")
		if (a == "hostname" || strings.HasPrefix(a, "hostname=")) && arg != a {
			rest = append(rest, args[:i]...)
			if name, ok = strings.CutPrefix(a, "hostname="); !ok {
				name = ""
				if i+1 < len(args) {
					name, i = args[i+1], i+1
				}
			}
			return name, append(rest, args[i+1:]...), true
		}
	}
	return "", args, false
}

// writeConfigReport prints what the node would do, as YAML comments, and
// its effective settings as YAML.
func writeConfigReport(w io.Writer, c nodeConfig, hostname func() (string, error)) error {
	adv := advertiseHost(c)
	raftAddr := net.JoinHostPort(adv, strconv.Itoa(c.RaftPort))
	var b strings.Builder
	b.WriteString("# walrus config check: valid\n")
	from := ""
	if c.NodeIDFromHostname {
		host, _ := hostname() // it worked when the config was loaded
		from = fmt.Sprintf(" (from the host name %s)", host)
	}
	fmt.Fprintf(&b, "# node %d%s, data in %s\n", c.NodeID, from, c.DataDir+"/node_"+strconv.FormatUint(c.NodeID, 10))
	fmt.Fprintf(&b, "# raft and joins: listen on %s, other nodes dial %s\n",
		net.JoinHostPort(c.RaftHost, strconv.Itoa(c.RaftPort)), raftAddr)
	fmt.Fprintf(&b, "# nats: clients on %s (advertised nats://%s), routes on %s (advertised nats-route://%s)\n",
		net.JoinHostPort(c.ClientHost, strconv.Itoa(c.NATSPort)), net.JoinHostPort(adv, strconv.Itoa(c.NATSPort)),
		net.JoinHostPort(c.ClientHost, strconv.Itoa(c.NATSClusterPort)), net.JoinHostPort(adv, strconv.Itoa(c.NATSClusterPort)))
	httpAddr := "off"
	if c.HTTPPort != 0 {
		httpAddr = net.JoinHostPort(c.ClientHost, strconv.Itoa(c.HTTPPort)) + " (/metrics, /healthz, /readyz)"
	}
	fmt.Fprintf(&b, "# native protocol on %s; http %s\n", net.JoinHostPort(c.ClientHost, strconv.Itoa(c.ClientPort)), httpAddr)
	b.WriteString("# retention: " + retentionSummary(c) + "\n")
	var others []string
	for _, j := range splitList(c.Join) {
		if j != raftAddr { // cluster skips the node's own address
			others = append(others, j)
		}
	}
	switch {
	case c.BootstrapExpect > 1 && len(others) > 0:
		fmt.Fprintf(&b, "# start: from its raft state if it has some, else it joins through %s, or bootstraps a new cluster "+
			"if %d nodes, this one included, are new and this one has the lowest id\n", strings.Join(others, ", "), c.BootstrapExpect)
	case c.Join == "" || c.BootstrapNodeID == c.NodeID:
		b.WriteString("# start: from its raft state if it has some, else it bootstraps a new cluster\n")
	case len(others) == 0:
		b.WriteString("# start: from its raft state if it has some, else it fails: --join names only this node\n")
	default:
		fmt.Fprintf(&b, "# start: from its raft state if it has some, else it joins through %s\n", strings.Join(others, ", "))
	}
	out, err := yaml.Parser().Marshal(c.settings())
	if err != nil {
		return err
	}
	b.Write(out)
	_, err = io.WriteString(w, b.String())
	return err
}

// retentionSummary says which sealed segments retention deletes.
func retentionSummary(c nodeConfig) string {
	var limits []string
	if age, _ := parseAge(c.RetentionMaxAge); age > 0 { // it parsed when the config was loaded
		limits = append(limits, "sealed over "+age.String()+" ago")
	}
	if c.RetentionMaxBytes > 0 {
		limits = append(limits, fmt.Sprintf("the oldest beyond %d bytes per topic", c.RetentionMaxBytes))
	}
	if c.RetentionMaxSegments > 0 {
		limits = append(limits, fmt.Sprintf("the oldest beyond %d per topic", c.RetentionMaxSegments))
	}
	if len(limits) == 0 {
		return "off, every entry is kept"
	}
	return "deletes sealed segments: " + strings.Join(limits, "; ")
}

// advertiseHost is the host other nodes reach this one by, for Raft and
// NATS alike: broker.Config.RaftAdvertiseHost after its default.
func advertiseHost(c nodeConfig) string {
	if c.RaftAdvertiseHost != "" {
		return c.RaftAdvertiseHost
	}
	if ip := net.ParseIP(c.RaftHost); ip != nil && ip.IsUnspecified() {
		return "127.0.0.1"
	}
	return c.RaftHost
}

// settings returns c as a map from key (flag name) to value, the node id
// resolved and leafnode passwords redacted.
func (c nodeConfig) settings() map[string]any {
	c.NodeIDFromHostname = false // NodeID holds its result
	m := make(map[string]any)
	v, t := reflect.ValueOf(c), reflect.TypeFor[nodeConfig]()
	for i := range t.NumField() {
		if key := t.Field(i).Tag.Get("koanf"); key != "" {
			m[key] = v.Field(i).Interface()
		}
	}
	var urls []string
	for _, s := range splitList(c.NATSLeafnodeURL...) {
		if u, err := url.Parse(s); err == nil {
			s = u.Redacted()
		}
		urls = append(urls, s)
	}
	m["nats-leafnode-url"] = urls
	return m
}
