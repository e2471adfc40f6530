package cluster

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

func TestHclogAdapter_LevelsAndFormats(t *testing.T) {
	var buf bytes.Buffer
	l := newHclogAdapter(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if l.IsTrace() || !l.IsDebug() || l.GetLevel() != hclog.Debug {
		t.Fatalf("levels: trace %v debug %v level %v", l.IsTrace(), l.IsDebug(), l.GetLevel())
	}
	l.Trace("dropped")
	l.Named("net").Debug("accepted connection", "peer", hclog.Fmt("%d-%s", 7, "x"), "n", hclog.Hex(255))
	l.With("k", "v").Warn("failed to contact", "time", 3)
	w := l.StandardWriter(nil)
	_, _ = w.Write([]byte("[ERROR] raft: boom\n2024/01/01 10:00:00 [DEBUG] raft: quiet\nplain line\n"))

	out := buf.String()
	for _, want := range []string{
		`level=DEBUG msg="accepted connection" component=raft logger=net peer=7-x n=0xff`,
		`level=WARN msg="failed to contact" component=raft k=v time=3`,
		`level=ERROR msg="raft: boom" component=raft`,
		`level=DEBUG msg="raft: quiet" component=raft`,
		`level=INFO msg="plain line" component=raft`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
	if strings.Contains(out, "dropped") {
		t.Errorf("a trace line was logged at debug level:\n%s", out)
	}
}
