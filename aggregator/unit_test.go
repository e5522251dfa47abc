package aggregator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/test"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/aggregator/metrics"
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/clockwork"
	"github.com/p2pbeat/heartbeat/wire"
)

var t0 = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

func randomPeer(t testing.TB) peer.ID {
	t.Helper()
	id, err := test.RandPeerID()
	require.NoError(t, err)
	return id
}

func TestConfigValidation(t *testing.T) {
	checkLeaks(t)
	h := newHost(t)
	tests := []struct {
		cfg   Config
		field string
	}{
		{Config{MaxNodes: -1}, "MaxNodes"},
		{Config{MaxLineBytes: 10}, "MaxLineBytes"},
		{Config{MaxLineBytes: 2 << 20}, "MaxLineBytes"},
		{Config{IdleTimeout: -time.Second}, "IdleTimeout"},
		{Config{IdleTimeout: 3 * time.Second}, "IdleTimeout"},
		{Config{ExpectedPeriod: -time.Second}, "ExpectedPeriod"},
		{Config{SweepInterval: -time.Second}, "SweepInterval"},
		{Config{SweepInterval: 4 * time.Second}, "SweepInterval"},
		{Config{SuspectAfter: time.Second}, "SuspectAfter"},
		{Config{DownAfter: 6 * time.Second}, "DownAfter"},
		// MaxPeriod left to its default (10× ExpectedPeriod) over the
		// 24 h limit: the field set is at fault.
		{Config{ExpectedPeriod: 3 * time.Hour}, "ExpectedPeriod"},
		// Past pacing's bounds: 1e19 panicked in New (the pacer's ring),
		// 1e-12 overflowed its period and paced nothing.
		{Config{AcceptRate: 1e19}, "AcceptRate"},
		{Config{AcceptRate: 1e-12}, "AcceptRate"},
	}
	for _, tc := range tests {
		t.Run(tc.field, func(t *testing.T) {
			_, err := New(h, tc.cfg)
			require.Error(t, err)
			require.Contains(t, err.Error(), "Config."+tc.field)
			_, err = HostOptions(tc.cfg, nil)
			require.ErrorContains(t, err, "Config."+tc.field)
			var (
				ae *ConfigError
				te *tracker.ConfigError
			)
			if errors.As(err, &ae) {
				require.Equal(t, tc.field, ae.Field)
			} else {
				require.ErrorAs(t, err, &te)
				require.Equal(t, tc.field, te.Field)
			}
		})
	}
	_, err := New(nil, Config{})
	require.Error(t, err)

	a, err := New(h, Config{})
	require.NoError(t, err)
	defer a.Close()
	got := a.Config()
	require.Equal(t, DefaultMaxNodes, got.MaxNodes)
	require.Equal(t, DefaultMaxLineBytes, got.MaxLineBytes)
	require.Equal(t, DefaultIdleTimeout, got.IdleTimeout)
	require.Equal(t, 3*time.Second, got.ExpectedPeriod)
	require.Equal(t, 6*time.Second, got.SuspectAfter)
	require.Equal(t, 15*time.Second, got.DownAfter)
	require.Equal(t, time.Second, got.SweepInterval)
}

func TestLineReader(t *testing.T) {
	const max = 16
	start := max + 1 // the first buffer; the cases run again from smaller ones
	read := func(r io.Reader) ([]string, error) {
		lr := newLineReader(r, make([]byte, start), max)
		var lines []string
		for {
			line, err := lr.next()
			if err != nil {
				return lines, err
			}
			lines = append(lines, string(line))
		}
	}
	tests := []struct {
		name  string
		input string
		lines []string
		err   error
	}{
		{"lines", "a\nbb\nccc\n", []string{"a", "bb", "ccc"}, io.EOF},
		{"blank lines skipped", "\na\n \t\r\n\r\nbb\n\n  ", []string{"a", "bb"}, io.EOF},
		{"blank line over the limit", "a\n" + strings.Repeat(" ", max+1) + "\n", []string{"a"}, errLineTooLong},
		{"last line without newline", "a\nbb", []string{"a", "bb"}, io.EOF},
		{"exactly the limit", strings.Repeat("x", max) + "\nz\n", []string{strings.Repeat("x", max), "z"}, io.EOF},
		{"one past the limit", "ok\n" + strings.Repeat("x", max+1) + "\n", []string{"ok"}, errLineTooLong},
		{"no newline past the limit", strings.Repeat("x", 10*max), nil, errLineTooLong},
		{"empty", "", nil, io.EOF},
	}
	for _, tc := range tests {
		for _, mode := range []string{"whole", "bytewise", "halves", "grown from 1", "grown from 5"} {
			t.Run(tc.name+"/"+mode, func(t *testing.T) {
				start = max + 1
				switch mode {
				case "grown from 1":
					start = 1
				case "grown from 5":
					start = 5
				}
				var r io.Reader = strings.NewReader(tc.input)
				switch mode {
				case "bytewise":
					r = iotest.OneByteReader(r)
				case "halves":
					r = iotest.HalfReader(r)
				}
				lines, err := read(r)
				require.Equal(t, tc.lines, lines)
				require.ErrorIs(t, err, tc.err)
			})
		}
	}

	t.Run("partial line dropped on a read error", func(t *testing.T) {
		boom := errors.New("boom")
		lines, err := read(io.MultiReader(strings.NewReader("a\n{\"Hea"), iotest.ErrReader(boom)))
		require.Equal(t, []string{"a"}, lines)
		require.ErrorIs(t, err, boom)
	})
	t.Run("a reader that makes no progress", func(t *testing.T) {
		_, err := read(zeroReader{})
		require.ErrorIs(t, err, io.ErrNoProgress)
	})
	t.Run("reads no more than the limit", func(t *testing.T) {
		cr := &countingReader{r: &endlessReader{remaining: 1 << 20}}
		_, err := read(cr)
		require.ErrorIs(t, err, errLineTooLong)
		require.LessOrEqual(t, cr.n, max+1)
	})
}

type zeroReader struct{}

func (zeroReader) Read([]byte) (int, error) { return 0, nil }

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// endlessReader yields remaining bytes of 'x' (no newline) without
// allocating, then io.EOF.
type endlessReader struct{ remaining int }

func (e *endlessReader) Read(p []byte) (int, error) {
	if e.remaining == 0 {
		return 0, io.EOF
	}
	n := min(len(p), e.remaining)
	for i := range p[:n] {
		p[i] = 'x'
	}
	e.remaining -= n
	return n, nil
}

// deadlineReader records the read deadlines set on it.
type deadlineReader struct {
	io.Reader
	armed int
}

func (d *deadlineReader) SetReadDeadline(time.Time) error { d.armed++; return nil }

// The idle deadline is armed before the first read and re-armed only after
// a complete line: a partial line trickling in does not extend it.
func TestIdleDeadlineArming(t *testing.T) {
	dr := &deadlineReader{Reader: iotest.OneByteReader(strings.NewReader("ab\ncd\nef"))}
	lr := newLineReader(dr, make([]byte, 17), 16)
	lr.dl, lr.idle = dr, time.Minute
	line, err := lr.next() // reads a, b, \n: armed once, before 'a'
	require.NoError(t, err)
	require.Equal(t, "ab", string(line))
	require.Equal(t, 1, dr.armed)
	line, err = lr.next() // re-armed before 'c' only
	require.NoError(t, err)
	require.Equal(t, "cd", string(line))
	require.Equal(t, 2, dr.armed)
	line, err = lr.next() // re-armed before 'e' only, not before 'f' or EOF
	require.NoError(t, err)
	require.Equal(t, "ef", string(line))
	require.Equal(t, 3, dr.armed)
}

// A 100 MiB stream with no newline is refused after MaxLineBytes, and the
// heap does not grow with it.
func TestMemoryBoundedWithoutNewline(t *testing.T) {
	checkLeaks(t)
	a, err := New(newHost(t), Config{})
	require.NoError(t, err)
	defer a.Close()
	id := randomPeer(t)

	src := &countingReader{r: &endlessReader{remaining: 100 << 20}}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	err = a.ServeLines(id, src)
	runtime.ReadMemStats(&after)

	require.ErrorIs(t, err, ErrLineTooLong)
	require.LessOrEqual(t, src.n, DefaultMaxLineBytes+1, "read no more than the limit")
	allocated := after.TotalAlloc - before.TotalAlloc
	grown := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("100 MiB offered: read %d bytes, allocated %d bytes, heap in use grew by %d bytes", src.n, allocated, grown)
	require.Less(t, allocated, uint64(1<<20), "total allocation during the stream")
	require.Less(t, grown, int64(2<<20), "heap growth")
	require.Equal(t, 1.0, counter(t, a.Registry(), "heartbeat_rejected_total", "reason", metrics.ReasonLineTooLong))
}

// The same over a real libp2p stream: the sender tries to write 100 MiB
// without a newline; the aggregator resets the stream after MaxLineBytes,
// so the sender gets a reset long before, and the process's heap (both
// hosts included) grows by a bounded amount, set by yamux's windows rather
// than by the input.
func TestMemoryBoundedOverLibp2p(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, Config{}, nil)
	s := newSender(t)
	st := s.open(t, e)

	chunk := bytes.Repeat([]byte("x"), 1<<20)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	written := 0
	var werr error
	for written < 100<<20 {
		var n int
		n, werr = st.Write(chunk)
		written += n
		if werr != nil {
			break
		}
	}
	require.ErrorIs(t, werr, network.ErrReset, "the sender sees the reset before 100 MiB")
	require.ErrorIs(t, e.rec.waitEnds(t, s.id(), 1), ErrLineTooLong)
	runtime.ReadMemStats(&after)
	allocated := after.TotalAlloc - before.TotalAlloc
	grown := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("sender wrote %d bytes before the reset; process allocated %d bytes, heap in use grew by %d bytes", written, allocated, grown)
	require.Less(t, allocated, uint64(4<<20))
	require.Less(t, grown, int64(4<<20))
}

// The sweeper detects silence on the injected clock, at the thresholds,
// and logs one JSON line per change with the agreed keys.
func TestSweeperOnMockClock(t *testing.T) {
	checkLeaks(t)
	mock := clockwork.NewMock(t0)
	logs := &logBuffer{}
	rec := newRecorder()
	// A fixed 1s period (no learning), no allowance: Suspect after 2s, Down
	// after 5s.
	cfg := Config{ExpectedPeriod: time.Second, StartupGrace: -1, MinPeriod: time.Second, MaxPeriod: time.Second, ReconnectAllowance: -1}
	a, err := New(newHost(t), cfg, WithClock(mock), withHooks(rec.hooks()),
		WithLogger(hclog.New(&hclog.LoggerOptions{Output: logs, JSONFormat: true, Level: hclog.Info})))
	require.NoError(t, err)
	defer a.Close()

	id := randomPeer(t)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- a.ServeLines(id, pr) }()
	_, err = fmt.Fprintf(pw, `{"Head":"{ h }","Height":1,"Nickname":"n1"}`+"\n")
	require.NoError(t, err)
	rec.waitBeats(t, id, 1)

	state := func() tracker.State {
		n, ok := a.Tracker().Node(id)
		require.True(t, ok)
		return n.State
	}
	clockwork.AdvanceTo(mock, t0.Add(2*time.Second)) // silent exactly 2s: not yet
	require.Equal(t, tracker.Up, state())
	clockwork.AdvanceTo(mock, t0.Add(3*time.Second))
	require.Equal(t, tracker.Suspect, state())
	clockwork.AdvanceTo(mock, t0.Add(5*time.Second)) // silent exactly 5s: not yet
	require.Equal(t, tracker.Suspect, state())
	clockwork.AdvanceTo(mock, t0.Add(6*time.Second))
	require.Equal(t, tracker.Down, state())

	_, err = fmt.Fprintf(pw, `{"Head":"{ h2 }","Height":2,"Nickname":"n1"}`+"\n")
	require.NoError(t, err)
	rec.waitBeats(t, id, 2)
	require.Equal(t, tracker.Up, state())
	require.NoError(t, pw.Close())
	require.NoError(t, recv(t, done))
	require.Equal(t, tracker.Left, state())

	var got []string
	for _, m := range logs.entries(t, "node state changed") {
		require.Equal(t, id.String(), m["peer_id"])
		require.Equal(t, "n1", m["nickname"])
		require.NotEmpty(t, m["last_seen"])
		got = append(got, fmt.Sprintf("%s->%s@%s", m["from"], m["to"], m["at"]))
	}
	at := func(d time.Duration) string { return t0.Add(d).Format(time.RFC3339Nano) }
	require.Equal(t, []string{
		"joining->up@" + at(0),
		"up->suspect@" + at(3*time.Second),
		"suspect->down@" + at(6*time.Second),
		"down->up@" + at(6*time.Second),
		"up->left@" + at(6*time.Second),
	}, got)
	for _, m := range logs.entries(t, "node state changed") {
		if m["to"] == "suspect" || m["to"] == "down" {
			require.Equal(t, "warn", m["@level"])
		}
	}
}

// WithBeatLog writes one JSON line per heartbeat.
func TestBeatLog(t *testing.T) {
	checkLeaks(t)
	logs := &logBuffer{}
	a, err := New(newHost(t), Config{}, WithBeatLog(true),
		WithLogger(hclog.New(&hclog.LoggerOptions{Output: logs, JSONFormat: true})))
	require.NoError(t, err)
	defer a.Close()
	id := randomPeer(t)
	in := `{"Head":"{ a }","Height":1,"Nickname":"n","MinerAddress":"t01"}` + "\n" + `{"Head":"{ b }","Height":2,"Nickname":"n","MinerAddress":"t01"}` + "\n"
	require.NoError(t, a.ServeLines(id, strings.NewReader(in)))
	beats := logs.entries(t, "heartbeat")
	require.Len(t, beats, 2)
	require.Equal(t, id.String(), beats[1]["peer_id"])
	require.Equal(t, "{ b }", beats[1]["head"])
	require.Equal(t, 2.0, beats[1]["height"])
	require.Equal(t, "t01", beats[1]["miner_address"])
	require.Equal(t, "n", beats[1]["nickname"])
}

func TestResourceLimits(t *testing.T) {
	for _, maxNodes := range []int{100, DefaultMaxNodes, 50000} {
		t.Run(fmt.Sprint(maxNodes), func(t *testing.T) {
			l := rcmgr.NewFixedLimiter(ResourceLimits(maxNodes, DefaultMaxLineBytes))
			for name, scope := range map[string]rcmgr.Limit{"system": l.GetSystemLimits(), "transient": l.GetTransientLimits()} {
				require.Greater(t, scope.GetConnLimit(network.DirInbound), maxNodes, name)
				require.Greater(t, scope.GetConnTotalLimit(), maxNodes, name)
				require.GreaterOrEqual(t, scope.GetStreamLimit(network.DirInbound), 2*maxNodes, name)
				require.GreaterOrEqual(t, scope.GetStreamTotalLimit(), 2*maxNodes, name)
				require.Greater(t, scope.GetFDLimit(), maxNodes, name)
				// Every node's heartbeat stream reserves yamux's window
				// and our line buffer.
				require.GreaterOrEqual(t, scope.GetMemoryLimit(), int64(maxNodes)*(yamuxStreamWindow+DefaultMaxLineBytes), name)
			}
			// Both protocols: v2's protocol scope was left at go-libp2p's
			// default once, and a 5,000-node v2 fleet stopped at 1,265
			// (libp2p_rcmgr_blocked_resources{scope="protocol"}).
			for name, scope := range map[string]rcmgr.Limit{
				"service":     l.GetServiceLimits(wire.ServiceName),
				"protocol":    l.GetProtocolLimits(wire.ProtocolID),
				"protocol v2": l.GetProtocolLimits(wire.ProtocolIDV2),
			} {
				// A superseding stream briefly doubles a node's streams.
				require.Greater(t, scope.GetStreamLimit(network.DirInbound), maxNodes, name)
				require.Greater(t, scope.GetStreamTotalLimit(), maxNodes, name)
				require.GreaterOrEqual(t, scope.GetMemoryLimit(), int64(maxNodes)*int64(DefaultMaxLineBytes+1), name)
			}
			for name, scope := range map[string]rcmgr.Limit{
				"service peer":     l.GetServicePeerLimits(wire.ServiceName),
				"protocol peer":    l.GetProtocolPeerLimits(wire.ProtocolID),
				"protocol v2 peer": l.GetProtocolPeerLimits(wire.ProtocolIDV2),
			} {
				require.GreaterOrEqual(t, scope.GetStreamLimit(network.DirInbound), 2, name)
				require.GreaterOrEqual(t, scope.GetMemoryLimit(), int64(2*(DefaultMaxLineBytes+1)), name)
			}
			require.GreaterOrEqual(t, l.GetServiceLimits("libp2p.identify").GetStreamLimit(network.DirInbound), maxNodes)
		})
	}
	// Why: go-libp2p's auto-scaled defaults admit far fewer connections.
	def := rcmgr.DefaultLimits
	t.Logf("go-libp2p default system inbound conns on this machine: %d", rcmgr.NewFixedLimiter(def.AutoScale()).GetSystemLimits().GetConnLimit(network.DirInbound))
}

func TestGaterUnit(t *testing.T) {
	in, out := randomPeer(t), randomPeer(t)
	g := Gater([]peer.ID{in})
	require.True(t, g.InterceptSecured(network.DirInbound, in, nil))
	require.False(t, g.InterceptSecured(network.DirInbound, out, nil))
	require.True(t, g.InterceptPeerDial(in))
	require.False(t, g.InterceptPeerDial(out))
	require.True(t, g.InterceptAccept(nil))
	ok, _ := g.InterceptUpgraded(nil)
	require.True(t, ok)
	require.Equal(t, uint64(2), g.Refused())

	var none *AllowGater
	require.True(t, none.InterceptSecured(network.DirInbound, out, nil))
	require.Zero(t, none.Refused())
}

func TestRateLog(t *testing.T) {
	r := newRateLog(time.Minute, 2)
	p1, p2, p3 := randomPeer(t), randomPeer(t), randomPeer(t)
	ok, _ := r.allow(p1, t0)
	require.True(t, ok)
	ok, _ = r.allow(p1, t0.Add(time.Second))
	require.False(t, ok)
	ok, _ = r.allow(p1, t0.Add(2*time.Second))
	require.False(t, ok)
	ok, suppressed := r.allow(p1, t0.Add(time.Minute))
	require.True(t, ok)
	require.Equal(t, 2, suppressed)

	ok, _ = r.allow(p2, t0.Add(time.Minute))
	require.True(t, ok)
	ok, _ = r.allow(p3, t0.Add(time.Minute)) // map full, nothing expired
	require.False(t, ok)
	ok, _ = r.allow(p3, t0.Add(3*time.Minute)) // expired entries are dropped
	require.True(t, ok)
}

// ServeLines on a tracker that is full refuses before reading.
func TestServeLinesFull(t *testing.T) {
	checkLeaks(t)
	a, err := New(newHost(t), Config{MaxNodes: 1})
	require.NoError(t, err)
	defer a.Close()
	// A reset (not a graceful EOF) leaves the node tracked; a Left node
	// would be evicted to make room.
	boom := errors.New("reset")
	require.ErrorIs(t, a.ServeLines(randomPeer(t), io.MultiReader(strings.NewReader(`{"Height":1}`+"\n"), iotest.ErrReader(boom))), boom)
	// Ended by the sender or the network: counted as a reset, not a
	// rejection.
	require.Equal(t, 1.0, counter(t, a.Registry(), "heartbeat_streams_closed_total", "how", metrics.ClosedReset))
	src := &countingReader{r: strings.NewReader(`{"Height":1}` + "\n")}
	err = a.ServeLines(randomPeer(t), src)
	require.ErrorIs(t, err, tracker.ErrFull)
	require.Zero(t, src.n)
}

// Blank and whitespace-only lines between heartbeats are skipped, as a
// json.Decoder-based receiver skips them: not beats, not errors.
func TestServeLinesSkipsBlankLines(t *testing.T) {
	checkLeaks(t)
	a, err := New(newHost(t), Config{})
	require.NoError(t, err)
	defer a.Close()
	id := randomPeer(t)
	in := "\n" + `{"Height":1}` + "\n \t\r\n\r\n" + `{"Height":2}` + "\n\n  "
	require.NoError(t, a.ServeLines(id, strings.NewReader(in)))
	n, ok := a.Tracker().Node(id)
	require.True(t, ok)
	require.Equal(t, uint64(2), n.Beats)
	require.Equal(t, uint64(2), n.Height)
	for _, r := range metrics.Reasons() {
		require.Zero(t, counter(t, a.Registry(), "heartbeat_rejected_total", "reason", r), r)
	}
	require.Equal(t, 1.0, counter(t, a.Registry(), "heartbeat_streams_closed_total", "how", metrics.ClosedEOF))
}

// Blank lines do not re-arm the idle deadline: only a heartbeat line does,
// so a peer sending only blank lines is still cut off.
func TestIdleDeadlineIgnoresBlankLines(t *testing.T) {
	dr := &deadlineReader{Reader: iotest.OneByteReader(strings.NewReader("ab\n\n \n\ncd\n"))}
	lr := newLineReader(dr, make([]byte, 17), 16)
	lr.dl, lr.idle = dr, time.Minute
	line, err := lr.next()
	require.NoError(t, err)
	require.Equal(t, "ab", string(line))
	require.Equal(t, 1, dr.armed)
	line, err = lr.next() // re-armed once, before the first blank line's byte
	require.NoError(t, err)
	require.Equal(t, "cd", string(line))
	require.Equal(t, 2, dr.armed)
}

// The line buffer starts small and grows by doubling only for a line that
// needs it, never past MaxLineBytes+1, reserving each growth first; a
// refused reservation ends the stream with nothing grown.
func TestLineBufferGrowth(t *testing.T) {
	const max = 100
	var reserved []int
	lr := newLineReader(strings.NewReader("short\n"+strings.Repeat("x", 40)+"\n"+strings.Repeat("y", max)+"\nz\n"), make([]byte, 8), max)
	lr.reserve = func(n int) error { reserved = append(reserved, n); return nil }
	var lines []string
	for {
		line, err := lr.next()
		if err != nil {
			require.ErrorIs(t, err, io.EOF)
			break
		}
		lines = append(lines, string(line))
	}
	require.Equal(t, []string{"short", strings.Repeat("x", 40), strings.Repeat("y", max), "z"}, lines)
	require.Equal(t, []int{8, 16, 32, 37}, reserved, "doubling from 8, capped at max+1 = 101")
	require.Equal(t, max+1, len(lr.buf))
	require.Equal(t, max+1-8, lr.grown, "grown is what was reserved")

	t.Run("short lines never grow it", func(t *testing.T) {
		lr := newLineReader(strings.NewReader(strings.Repeat("1234567\n", 1000)), make([]byte, 8), max)
		lr.reserve = func(n int) error { t.Fatalf("reserved %d bytes", n); return nil }
		for {
			if _, err := lr.next(); err != nil {
				require.ErrorIs(t, err, io.EOF)
				break
			}
		}
		require.Zero(t, lr.grown)
		require.Len(t, lr.buf, 8)
	})
	t.Run("a refused reservation ends the stream", func(t *testing.T) {
		refused := errors.New("resource limit exceeded")
		lr := newLineReader(strings.NewReader(strings.Repeat("x", 50)+"\n"), make([]byte, 8), max)
		calls := 0
		lr.reserve = func(n int) error {
			calls++
			if calls == 2 {
				return refused
			}
			return nil
		}
		_, err := lr.next()
		require.ErrorIs(t, err, errLineBufferLimit)
		require.ErrorIs(t, err, refused)
		require.Equal(t, 8, lr.grown, "only the granted growth counts")
	})
}

// Over libp2p, a stream's line buffer reservation is the small initial
// buffer, a long line grows it within the stream scope, and everything is
// released when the stream ends: the service scope is back to zero.
func TestLineBufferReservation(t *testing.T) {
	checkLeaks(t)
	cfg := Config{}
	hopts, err := HostOptions(cfg, nil)
	require.NoError(t, err)
	ah := newHost(t, hopts...)
	rec := newRecorder()
	a, err := New(ah, cfg, withHooks(rec.hooks()))
	require.NoError(t, err)
	defer a.Close()
	serviceMem := func() int64 {
		var mem int64
		require.NoError(t, ah.Network().ResourceManager().ViewService(wire.ServiceName, func(s network.ServiceScope) error {
			mem = s.Stat().Memory
			return nil
		}))
		return mem
	}

	node := newHost(t)
	node.Peerstore().AddAddrs(ah.ID(), ah.Addrs(), time.Hour)
	s, err := node.NewStream(context.Background(), ah.ID(), wire.ProtocolID)
	require.NoError(t, err)
	long := validLine(t, strings.Repeat("n", 3000))
	require.Greater(t, len(long), 3000)
	_, err = s.Write(append(validLine(t, "short"), '\n'))
	require.NoError(t, err)
	rec.waitBeats(t, node.ID(), 1)
	require.EqualValues(t, initialLineBuffer, serviceMem(), "a short line: the initial buffer only")

	_, err = s.Write(append(long, '\n'))
	require.NoError(t, err)
	rec.waitBeats(t, node.ID(), 2)
	require.EqualValues(t, 4096, serviceMem(), "grown by doubling to hold a 3 KB line")

	require.NoError(t, s.Close())
	rec.waitEnds(t, node.ID(), 1)
	require.Zero(t, serviceMem(), "released when the stream ended")
}

// validLine is one heartbeat line (without '\n') with nickname nick.
func validLine(t *testing.T, nick string) []byte {
	t.Helper()
	line, err := wire.AppendLine(nil, wire.Heartbeat{Head: "{ bafy2bzacetest }", Height: 1, Nickname: nick})
	require.NoError(t, err)
	return bytes.TrimSuffix(line, []byte("\n"))
}
