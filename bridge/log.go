package bridge

import (
	"context"
	"fmt"
	"log/slog"
)

// Log attribute keys.
const (
	logKeyComponent = "component"
	logKeyNode      = "node"
	logKeyPeer      = "peer"
	logKeyOp        = "op"
	logKeyErr       = "err"
)

// levelTrace is below slog.LevelDebug; NATS protocol tracing is enabled
// only when the logger accepts it (it logs every message).
const levelTrace = slog.LevelDebug - 4

// natsLogger routes the embedded server's log lines into slog. A fatal line
// (the server gives up, e.g. a listener cannot bind) is logged as an error
// and reported on fatal instead of exiting the process.
type natsLogger struct {
	log   *slog.Logger
	fatal chan string // buffered, 1; the first fatal message wins
}

func newNATSLogger(log *slog.Logger) *natsLogger {
	return &natsLogger{log: log.With(logKeyComponent, "nats"), fatal: make(chan string, 1)}
}

func (l *natsLogger) logf(level slog.Level, format string, v []any) {
	if !l.log.Enabled(context.Background(), level) {
		return
	}
	l.log.Log(context.Background(), level, fmt.Sprintf(format, v...))
}

func (l *natsLogger) Noticef(format string, v ...any) { l.logf(slog.LevelInfo, format, v) }
func (l *natsLogger) Warnf(format string, v ...any)   { l.logf(slog.LevelWarn, format, v) }
func (l *natsLogger) Errorf(format string, v ...any)  { l.logf(slog.LevelError, format, v) }
func (l *natsLogger) Debugf(format string, v ...any)  { l.logf(slog.LevelDebug, format, v) }
func (l *natsLogger) Tracef(format string, v ...any)  { l.logf(levelTrace, format, v) }

func (l *natsLogger) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.log.Error(msg, "fatal", true)
	select {
	case l.fatal <- msg:
	default:
	}
}

// levels reports which of the server's optional log levels to turn on.
func (l *natsLogger) levels() (debug, trace bool) {
	ctx := context.Background()
	return l.log.Enabled(ctx, slog.LevelDebug), l.log.Enabled(ctx, levelTrace)
}
