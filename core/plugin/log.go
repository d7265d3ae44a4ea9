package plugin

import (
	"bytes"
	"context"
	"io"
	"log"
	"log/slog"
	"slices"
	"sync"

	hclog "github.com/hashicorp/go-hclog"
)

// Host side: go-plugin logs through hclog, both its own messages and the
// plugin's (each JSON line the plugin writes to stderr is re-emitted at its
// level with its key/value pairs). hclogAdapter sends all of it to meshd's
// slog logger, already tagged with the plugin's name and kind.

const levelTrace = slog.LevelDebug - 4

type hclogAdapter struct {
	log  *slog.Logger
	args []any
}

func newHCLogger(l *slog.Logger) hclog.Logger { return &hclogAdapter{log: l} }

var _ hclog.Logger = (*hclogAdapter)(nil)

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
	}
	return slog.LevelInfo
}

func (a *hclogAdapter) Log(level hclog.Level, msg string, args ...any) {
	if level == hclog.Off || level == hclog.NoLevel {
		level = hclog.Info
	}
	lv := slogLevel(level)
	if !a.log.Enabled(context.Background(), lv) {
		return
	}
	// go-plugin appends the plugin's own timestamp (meshd's record has
	// one) and calls the binary's path "plugin", which is the instance's
	// name in meshd's log.
	args = slices.Clone(args)
	for i := 0; i+1 < len(args); i += 2 {
		switch args[i] {
		case "timestamp":
			args = append(args[:i], args[i+2:]...)
			i -= 2
		case "plugin":
			args[i] = "binary"
		}
	}
	a.log.Log(context.Background(), lv, msg, append(append([]any(nil), a.args...), args...)...)
}

func (a *hclogAdapter) Trace(msg string, args ...any) { a.Log(hclog.Trace, msg, args...) }
func (a *hclogAdapter) Debug(msg string, args ...any) { a.Log(hclog.Debug, msg, args...) }
func (a *hclogAdapter) Info(msg string, args ...any)  { a.Log(hclog.Info, msg, args...) }
func (a *hclogAdapter) Warn(msg string, args ...any)  { a.Log(hclog.Warn, msg, args...) }
func (a *hclogAdapter) Error(msg string, args ...any) { a.Log(hclog.Error, msg, args...) }

func (a *hclogAdapter) enabled(l hclog.Level) bool {
	return a.log.Enabled(context.Background(), slogLevel(l))
}

func (a *hclogAdapter) IsTrace() bool { return a.enabled(hclog.Trace) }
func (a *hclogAdapter) IsDebug() bool { return a.enabled(hclog.Debug) }
func (a *hclogAdapter) IsInfo() bool  { return a.enabled(hclog.Info) }
func (a *hclogAdapter) IsWarn() bool  { return a.enabled(hclog.Warn) }
func (a *hclogAdapter) IsError() bool { return a.enabled(hclog.Error) }

func (a *hclogAdapter) ImpliedArgs() []any { return a.args }

func (a *hclogAdapter) With(args ...any) hclog.Logger {
	return &hclogAdapter{log: a.log, args: append(append([]any(nil), a.args...), args...)}
}

// Name, Named and ResetNamed: go-plugin names sub-loggers after the binary
// and its parts (stdio, broker); every line already carries plugin=<name>,
// so the names are dropped.
func (a *hclogAdapter) Name() string                   { return "" }
func (a *hclogAdapter) Named(string) hclog.Logger      { return a }
func (a *hclogAdapter) ResetNamed(string) hclog.Logger { return a }
func (a *hclogAdapter) SetLevel(hclog.Level)           {}
func (a *hclogAdapter) GetLevel() hclog.Level          { return hclog.Trace }
func (a *hclogAdapter) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return &lineLogger{log: a.log, level: slog.LevelInfo, attrs: a.args}
}
func (a *hclogAdapter) StandardLogger(o *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(a.StandardWriter(o), "", 0)
}

// lineLogger turns a byte stream into one log record per line: what a
// plugin prints to its stdout and stderr (after go-plugin's Serve takes
// them over) arrives through it. Lines longer than maxLogLine are cut, so
// a plugin that never prints a newline cannot grow meshd's memory.
type lineLogger struct {
	log   *slog.Logger
	level slog.Level
	attrs []any

	mu  sync.Mutex
	buf []byte
}

const maxLogLine = 16 << 10

func (w *lineLogger) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			room := maxLogLine - len(w.buf)
			if len(p) > room {
				w.buf = append(w.buf, p[:room]...)
				w.flush(true)
				p = p[room:]
				continue
			}
			w.buf = append(w.buf, p...)
			break
		}
		line := p[:i]
		if len(w.buf)+len(line) > maxLogLine {
			line = line[:max(0, maxLogLine-len(w.buf))]
			w.buf = append(w.buf, line...)
			w.flush(true)
		} else {
			w.buf = append(w.buf, line...)
			w.flush(false)
		}
		p = p[i+1:]
	}
	return n, nil
}

func (w *lineLogger) flush(cut bool) {
	line := string(bytes.TrimRight(w.buf, "\r"))
	w.buf = w.buf[:0]
	attrs := w.attrs
	if cut {
		attrs = append(append([]any(nil), attrs...), "truncated", true)
	}
	w.log.Log(context.Background(), w.level, line, attrs...)
}

// Plugin side: NewPluginLogger returns an slog logger whose records go-plugin
// on the host understands: one JSON object per line on the process's
// original stderr, with hclog's @level, @message and @timestamp keys. The
// host re-emits each at its level in meshd's log, tagged with the plugin.
func NewPluginLogger(w io.Writer, level slog.Leveler) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) > 0 {
				return a
			}
			switch a.Key {
			case slog.TimeKey:
				return slog.String("@timestamp", a.Value.Time().Format("2006-01-02T15:04:05.000000Z07:00"))
			case slog.LevelKey:
				lv, _ := a.Value.Any().(slog.Level)
				name := "info"
				switch {
				case lv < slog.LevelDebug:
					name = "trace"
				case lv < slog.LevelInfo:
					name = "debug"
				case lv < slog.LevelWarn:
					name = "info"
				case lv < slog.LevelError:
					name = "warn"
				default:
					name = "error"
				}
				return slog.String("@level", name)
			case slog.MessageKey:
				return slog.String("@message", a.Value.String())
			}
			return a
		},
	}))
}
