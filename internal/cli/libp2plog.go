package cli

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"unicode"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p/gologshim"
)

// go-libp2p logs through log/slog (its gologshim package), by default to
// stderr in its own format, with source paths. The command routes those
// records through its own hclog logger instead, so that every line has one
// format (JSON with --log-json) and one level scheme.
var (
	libp2pLog     atomic.Pointer[hclog.Logger]
	libp2pLogOnce sync.Once
)

// routeLibp2pLogs sends go-libp2p's log records to log from now on. The
// handler is installed once per process (gologshim binds it at a logger's
// first record) and reads the current logger at every record.
func routeLibp2pLogs(log hclog.Logger) {
	libp2pLog.Store(&log)
	libp2pLogOnce.Do(func() { gologshim.SetDefaultHandler(libp2pHandler{}) })
}

// libp2pHandler is a slog.Handler writing to the current hclog logger, named
// "libp2p.<subsystem>". It passes WARN and above (go-libp2p's INFO and DEBUG
// are for its developers), and everything at --log-level trace.
type libp2pHandler struct {
	attrs []slog.Attr
}

func (libp2pHandler) Enabled(_ context.Context, l slog.Level) bool {
	p := libp2pLog.Load()
	if p == nil {
		return false
	}
	log := *p
	if log.IsTrace() {
		return true
	}
	return l >= slog.LevelWarn && log.GetLevel() <= hclogLevelOf(l)
}

func (h libp2pHandler) Handle(_ context.Context, r slog.Record) error {
	p := libp2pLog.Load()
	if p == nil {
		return nil
	}
	name := "libp2p"
	var args []any
	add := func(a slog.Attr) bool {
		switch a.Key {
		case "logger":
			name += "." + a.Value.String()
		case "system":
			if a.Value.String() == "fx" {
				// go-libp2p's dependency injection reports a failed
				// start three times; libp2p.New returns that error.
				name = ""
			}
		default:
			v := a.Value.Resolve().Any()
			if s, ok := v.(fmt.Stringer); ok {
				v = s.String() // a multiaddr, a peer id: their text form
			}
			args = append(args, snakeCase(a.Key), v)
		}
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	if name == "" {
		return nil
	}
	(*p).Named(name).Log(hclogLevelOf(r.Level), r.Message, args...)
	return nil
}

func (h libp2pHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return libp2pHandler{attrs: append(append([]slog.Attr(nil), h.attrs...), attrs...)}
}

// WithGroup flattens groups: no go-libp2p logger uses them.
func (h libp2pHandler) WithGroup(string) slog.Handler { return h }

func hclogLevelOf(l slog.Level) hclog.Level {
	switch {
	case l >= slog.LevelError:
		return hclog.Error
	case l >= slog.LevelWarn:
		return hclog.Warn
	case l >= slog.LevelInfo:
		return hclog.Info
	case l >= slog.LevelDebug:
		return hclog.Debug
	}
	return hclog.Trace
}

// snakeCase turns go-libp2p's keys (err, remotePeer) into ours (error,
// remote_peer).
func snakeCase(k string) string {
	if k == "err" {
		return "error"
	}
	var b strings.Builder
	for i, r := range k {
		if unicode.IsUpper(r) {
			if i > 0 {
				b.WriteByte('_')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}
