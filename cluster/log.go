package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"strconv"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// Log attribute keys.
const (
	logKeyComponent = "component"
	logKeyNode      = "node"
	logKeyPeer      = "peer"
	logKeyAddr      = "addr"
	logKeyLogger    = "logger"
	logKeyErr       = "err"
)

// levelTrace is below slog.LevelDebug: hashicorp's TRACE lines.
const levelTrace = slog.LevelDebug - 4

// hclogAdapter is an hclog.Logger that writes into slog, so hashicorp/raft,
// its transport, its snapshot store and raft-wal log through the injected
// logger (component=raft). hclog levels map to slog levels one to one, TRACE
// below Debug; raft's DEBUG noise stays at slog Debug. SetLevel is ignored:
// the slog handler decides what is kept.
type hclogAdapter struct {
	log     *slog.Logger
	name    string
	implied []any
}

var _ hclog.Logger = (*hclogAdapter)(nil)

func newHclogAdapter(l *slog.Logger) *hclogAdapter {
	return &hclogAdapter{log: l.With(logKeyComponent, "raft")}
}

func slogLevel(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace:
		return levelTrace
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

func (a *hclogAdapter) Log(level hclog.Level, msg string, args ...any) {
	lvl := slogLevel(level)
	if lvl > slog.LevelDebug && closedConn(args) {
		// Raft's transport reports connections closed by a shutdown (ours
		// or the peer's) as errors; they are routine.
		lvl = slog.LevelDebug
	}
	if !a.log.Enabled(context.Background(), lvl) {
		return
	}
	a.log.Log(context.Background(), lvl, msg, slogArgs(args)...)
}

// closedConn reports whether an hclog key/value list carries an error from a
// closed connection.
func closedConn(args []any) bool {
	for _, v := range args {
		if err, ok := v.(error); ok && (errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF)) {
			return true
		}
	}
	return false
}

// slogArgs renders hclog's formatting values (hclog.Fmt, hclog.Hex, ...)
// the way hclog would; slog would print their raw parts.
func slogArgs(args []any) []any {
	var out []any
	for i, v := range args {
		var s string
		switch v := v.(type) {
		case hclog.Format:
			if len(v) > 0 {
				if format, ok := v[0].(string); ok {
					s = fmt.Sprintf(format, v[1:]...)
					break
				}
			}
			s = fmt.Sprint(v...)
		case hclog.Hex:
			s = "0x" + strconv.FormatUint(uint64(v), 16)
		case hclog.Octal:
			s = "0" + strconv.FormatUint(uint64(v), 8)
		case hclog.Binary:
			s = "0b" + strconv.FormatUint(uint64(v), 2)
		case hclog.Quote:
			s = strconv.Quote(string(v))
		default:
			continue
		}
		if out == nil {
			out = append([]any(nil), args...)
		}
		out[i] = s
	}
	if out == nil {
		return args
	}
	return out
}

func (a *hclogAdapter) Trace(msg string, args ...any) { a.Log(hclog.Trace, msg, args...) }
func (a *hclogAdapter) Debug(msg string, args ...any) { a.Log(hclog.Debug, msg, args...) }
func (a *hclogAdapter) Info(msg string, args ...any)  { a.Log(hclog.Info, msg, args...) }
func (a *hclogAdapter) Warn(msg string, args ...any)  { a.Log(hclog.Warn, msg, args...) }
func (a *hclogAdapter) Error(msg string, args ...any) { a.Log(hclog.Error, msg, args...) }

func (a *hclogAdapter) enabled(l slog.Level) bool { return a.log.Enabled(context.Background(), l) }

func (a *hclogAdapter) IsTrace() bool { return a.enabled(levelTrace) }
func (a *hclogAdapter) IsDebug() bool { return a.enabled(slog.LevelDebug) }
func (a *hclogAdapter) IsInfo() bool  { return a.enabled(slog.LevelInfo) }
func (a *hclogAdapter) IsWarn() bool  { return a.enabled(slog.LevelWarn) }
func (a *hclogAdapter) IsError() bool { return a.enabled(slog.LevelError) }

func (a *hclogAdapter) ImpliedArgs() []any { return a.implied }

func (a *hclogAdapter) With(args ...any) hclog.Logger {
	return &hclogAdapter{
		log:     a.log.With(slogArgs(args)...),
		name:    a.name,
		implied: append(append([]any(nil), a.implied...), args...),
	}
}

func (a *hclogAdapter) Name() string { return a.name }

func (a *hclogAdapter) Named(name string) hclog.Logger {
	if a.name != "" {
		name = a.name + "." + name
	}
	return a.ResetNamed(name)
}

func (a *hclogAdapter) ResetNamed(name string) hclog.Logger {
	return &hclogAdapter{log: a.log.With(logKeyLogger, name), name: name, implied: a.implied}
}

func (a *hclogAdapter) SetLevel(hclog.Level) {}

func (a *hclogAdapter) GetLevel() hclog.Level {
	for _, l := range []hclog.Level{hclog.Trace, hclog.Debug, hclog.Info, hclog.Warn, hclog.Error} {
		if a.enabled(slogLevel(l)) {
			return l
		}
	}
	return hclog.Off
}

func (a *hclogAdapter) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(a.StandardWriter(opts), "", 0)
}

func (a *hclogAdapter) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return &levelWriter{log: a}
}

// levelWriter maps lines written in the standard library's format with an
// hclog level prefix ("[DEBUG] raft: ...") to slog levels; lines without a
// prefix are Info.
type levelWriter struct{ log *hclogAdapter }

var levelPrefixes = []struct {
	prefix string
	level  hclog.Level
}{
	{"[TRACE]", hclog.Trace}, {"[DEBUG]", hclog.Debug}, {"[INFO]", hclog.Info},
	{"[WARN]", hclog.Warn}, {"[ERROR]", hclog.Error}, {"[ERR]", hclog.Error},
}

func (w *levelWriter) Write(p []byte) (int, error) {
	for line := range bytes.Lines(p) {
		msg := strings.TrimSpace(string(line))
		if msg == "" {
			continue
		}
		level := hclog.Info
		for _, lp := range levelPrefixes {
			// The prefix may follow a timestamp ("2006/01/02 15:04:05 [WARN] ...").
			if i := strings.Index(msg, lp.prefix); i >= 0 && i <= 32 {
				level, msg = lp.level, strings.TrimSpace(msg[i+len(lp.prefix):])
				break
			}
		}
		w.log.Log(level, msg)
	}
	return len(p), nil
}
