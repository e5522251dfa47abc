package aggregator

import (
	"context"
	"encoding/hex"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/aggregator/metrics"
	"github.com/p2pbeat/heartbeat/aggregator/pacing"
	"github.com/p2pbeat/heartbeat/aggregator/store"
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/clockwork"
	"github.com/p2pbeat/heartbeat/wire2"
)

// v2conn is a test-side v2 stream: frames out with an Encoder, in with a
// Reader.
type v2conn struct {
	st  network.Stream
	enc wire2.Encoder
	r   *wire2.Reader
	f   wire2.Frame
}

// openV2 opens a /fil/heartbeat/2.0.0 stream to e; reset when t ends.
func (s *sender) openV2(t *testing.T, e *env) *v2conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	require.NoError(t, s.h.Connect(ctx, e.addrInfo()))
	st, err := s.h.NewStream(ctx, e.h.ID(), wire2.ProtocolID)
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Reset() })
	require.NoError(t, st.SetDeadline(time.Now().Add(guard)))
	return &v2conn{st: st, r: wire2.NewReader(st, make([]byte, wire2.MaxFrameBytes))}
}

func (c *v2conn) send(t *testing.T, m wire2.Message) {
	t.Helper()
	b, err := c.enc.Append(nil, m)
	require.NoError(t, err)
	_, err = c.st.Write(b)
	require.NoError(t, err)
}

// recv reads one frame and requires its type.
func (c *v2conn) recv(t *testing.T, want wire2.Type) *wire2.Frame {
	t.Helper()
	p, err := c.r.Next()
	require.NoError(t, err)
	require.NoError(t, c.f.Decode(p))
	require.Equal(t, want, c.f.Type)
	return &c.f
}

func hello(boot byte, period time.Duration) *wire2.Hello {
	return &wire2.Hello{BootID: wire2.BootID{boot}, Impl: "test", BeatPeriod: period, Nickname: "n2"}
}

func beatAt(seq uint64, rtt time.Duration) *wire2.Beat {
	return &wire2.Beat{Seq: seq, Time: time.Now().UnixNano(), Head: "{ h }", Height: seq, RTT: rtt}
}

// A v2 session over libp2p: Welcome answers Hello, an Ack answers every
// Beat, a seq gap counts lost beats, the declared period is the node's,
// RTT and skew are kept and observed in the histograms, a new boot id is a
// restart, and Bye makes the node Left at once with an orderly close.
func TestV2Session(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, Config{}, nil)
	s := newSender(t)
	c := s.openV2(t, e)
	c.send(t, hello(1, 10*time.Second))
	w := c.recv(t, wire2.TypeWelcome).Welcome
	require.Equal(t, Impl, w.Impl)
	for _, seq := range []uint64{1, 2, 4} {
		c.send(t, beatAt(seq, 2*time.Millisecond))
		require.Equal(t, seq, c.recv(t, wire2.TypeAck).Ack.Seq)
	}
	n, ok := e.a.Tracker().Node(s.id())
	require.True(t, ok)
	require.Equal(t, uint8(2), n.Protocol)
	require.Equal(t, 10*time.Second, n.Period)
	require.True(t, n.DeclaredPeriod)
	require.Equal(t, uint64(1), n.LostBeats)
	require.Equal(t, 2*time.Millisecond, n.RTT)
	require.Less(t, n.Skew.Abs(), time.Minute, "one host, one clock")
	require.Equal(t, tracker.Up, n.State)
	require.Equal(t, "n2", n.Nickname)
	require.Equal(t, uint64(4), n.Height)

	// Bye: Left at once, orderly close.
	c.send(t, &wire2.Bye{Reason: "shutdown"})
	require.NoError(t, c.st.CloseWrite())
	require.NoError(t, e.rec.waitEnds(t, s.id(), 1))
	_, err := c.r.Next()
	require.ErrorIs(t, err, io.EOF)
	n, _ = e.a.Tracker().Node(s.id())
	require.Equal(t, tracker.Left, n.State)

	// A new boot: a restart.
	c = s.openV2(t, e)
	c.send(t, hello(2, 10*time.Second))
	c.recv(t, wire2.TypeWelcome)
	c.send(t, beatAt(1, 0))
	c.recv(t, wire2.TypeAck)
	n, _ = e.a.Tracker().Node(s.id())
	require.Equal(t, uint64(1), n.Restarts)
	require.Equal(t, tracker.Up, n.State)

	hist := func(name string) uint64 {
		mfs, err := e.a.Registry().Gather()
		require.NoError(t, err)
		for _, mf := range mfs {
			if mf.GetName() == name {
				return mf.GetMetric()[0].GetHistogram().GetSampleCount()
			}
		}
		t.Fatalf("no histogram %s", name)
		return 0
	}
	require.Equal(t, uint64(3), hist("heartbeat_v2_rtt_seconds"), "beats with an RTT")
	require.Equal(t, uint64(4), hist("heartbeat_v2_clock_skew_seconds"), "every beat")
}

// Bad v2 input ends that stream only (a reset), counted by reason; a
// bystander's v2 stream flows on.
func TestV2BadInput(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, Config{}, nil)
	by := newSender(t)
	bc := by.openV2(t, e)
	bc.send(t, hello(9, time.Second))
	bc.recv(t, wire2.TypeWelcome)
	seq := uint64(0)
	beat := func() {
		t.Helper()
		seq++
		bc.send(t, beatAt(seq, 0))
		require.Equal(t, seq, bc.recv(t, wire2.TypeAck).Ack.Seq)
	}
	beat()

	bad := newSender(t)
	raw := func(h string) []byte {
		b, err := hex.DecodeString(strings.ReplaceAll(h, " ", ""))
		require.NoError(t, err)
		return b
	}
	frames := func(ms ...wire2.Message) []byte {
		var enc wire2.Encoder
		var out []byte
		for _, m := range ms {
			var err error
			out, err = enc.Append(out, m)
			require.NoError(t, err)
		}
		return out
	}
	cases := []struct {
		name   string
		input  []byte
		reason string
	}{
		{"malformed frame", raw("03 a1 01 01"), metrics.ReasonMalformedFrame},
		{"length prefix over the bound", raw("ffff01"), metrics.ReasonFrameTooLong},
		{"unknown message type", raw("03 82 07 a0"), metrics.ReasonUnknownMessage},
		{"beat before hello", frames(beatAt(1, 0)), metrics.ReasonBeatBeforeHello},
		{"seq going backwards", frames(hello(3, time.Second), beatAt(5, 0), beatAt(5, 0)), metrics.ReasonSeqBackwards},
		{"second hello", frames(hello(3, time.Second), hello(3, time.Second)), metrics.ReasonSecondHello},
		{"an aggregator's message", frames(hello(3, time.Second), &wire2.Ack{Seq: 1, Time: 1}), metrics.ReasonUnexpectedMessage},
	}
	ends := 0
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := rejected(t, e, tc.reason)
			c := bad.openV2(t, e)
			_, _ = c.st.Write(tc.input)
			// Welcome and Acks of the good frames may come first.
			for {
				p, err := c.r.Next()
				if err != nil {
					require.ErrorIs(t, err, network.ErrReset)
					break
				}
				require.NoError(t, c.f.Decode(p))
			}
			ends++
			require.Error(t, e.rec.waitEnds(t, bad.id(), ends))
			require.Equal(t, before+1, rejected(t, e, tc.reason))
			beat()
		})
	}
}

// Past the accept rate a new v2 stream gets GoAway whose retry-after is
// its slot (package pacing): the first refused one the moment the rate
// frees (1 s at 1/s), the next one slot later (1/(Headroom·rate)); it is
// counted as paced and closed in order. A node the tracker holds Up is not
// paced (a reset storm must not turn it Suspect), counted as unpaced. The
// slot holder is admitted at its slot on the aggregator's clock.
func TestV2Pacing(t *testing.T) {
	checkLeaks(t)
	clk := clockwork.NewMock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	e := newEnv(t, Config{AcceptRate: 1, PacingWindow: 10 * time.Second}, nil, WithClock(clk))
	s1, s2, s3 := newSender(t), newSender(t), newSender(t)
	c1 := s1.openV2(t, e)
	c1.send(t, hello(1, time.Second))
	c1.recv(t, wire2.TypeWelcome)
	c1.send(t, beatAt(1, 0))
	c1.recv(t, wire2.TypeAck)

	hr := pacing.Headroom // a variable: the division rounds at run time, as in the pacer
	slot := time.Duration(float64(time.Second) / (hr * 1))
	for i, s := range []*sender{s2, s3} {
		c := s.openV2(t, e)
		g := c.recv(t, wire2.TypeGoAway).GoAway
		require.Equal(t, "busy", g.Reason)
		require.Equal(t, time.Second+time.Duration(i)*slot, g.RetryAfter, "sender %d: its slot", i+2)
		_, err := c.r.Next()
		require.ErrorIs(t, err, io.EOF, "GoAway, then an orderly close")
		require.Equal(t, float64(i+1), rejected(t, e, metrics.ReasonPaced))
	}

	// s1 is Up: its new stream (a reset, a NAT rebinding) is not paced.
	c1 = s1.openV2(t, e)
	c1.send(t, hello(1, time.Second))
	c1.recv(t, wire2.TypeWelcome)
	require.Equal(t, float64(2), rejected(t, e, metrics.ReasonPaced))
	require.Equal(t, float64(1), counter(t, e.a.Registry(), "heartbeat_v2_streams_unpaced_total"))

	clk.Add(time.Second) // s2's slot
	c2 := s2.openV2(t, e)
	c2.send(t, hello(2, time.Second))
	c2.recv(t, wire2.TypeWelcome)
}

// Config.Protocols selects the handlers: a v1-only aggregator does not
// speak v2.
func TestProtocolsConfig(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, Config{Protocols: []string{ProtocolV1}}, nil)
	s := newSender(t)
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	require.NoError(t, s.h.Connect(ctx, e.addrInfo()))
	_, err := s.h.NewStream(ctx, e.h.ID(), wire2.ProtocolID)
	require.Error(t, err)
	_, err = New(e.h, Config{Protocols: []string{"v3"}})
	require.ErrorContains(t, err, "Config.Protocols")
}

// An aggregator restart under a v2 sender: Close sends GoAway (reason
// "shutdown", retry-after inside the pacing window) then EOF, an orderly
// end; the node keeps its state in the old tracker (a shutdown is not a
// node leaving); the sender, back on the new aggregator with the same boot
// id, is welcomed and acked, with no restart and no loss counted.
func TestV2AggregatorRestart(t *testing.T) {
	checkLeaks(t)
	// An hour's pacing window: the shutdown's retry-after must still come
	// within half the restarted aggregator's startup grace, or it would turn
	// the node Down on its return (pacing.ShutdownSpread).
	cfg := Config{PacingWindow: time.Hour, StartupGrace: 4 * time.Second}
	e := newEnv(t, cfg, nil)
	s := newSender(t)
	c := s.openV2(t, e)
	c.send(t, hello(1, time.Second))
	c.recv(t, wire2.TypeWelcome)
	for seq := uint64(1); seq <= 2; seq++ {
		c.send(t, beatAt(seq, time.Millisecond))
		c.recv(t, wire2.TypeAck)
	}

	closed := make(chan error, 1)
	go func() { closed <- e.a.Close() }()
	g := c.recv(t, wire2.TypeGoAway).GoAway
	require.Equal(t, "shutdown", g.Reason)
	require.Less(t, g.RetryAfter, 2*time.Second)
	_, err := c.r.Next()
	require.ErrorIs(t, err, io.EOF, "GoAway, then an orderly end")
	require.NoError(t, c.st.CloseWrite())
	require.NoError(t, <-closed)
	n, _ := e.a.Tracker().Node(s.id())
	require.Equal(t, tracker.Up, n.State, "a shutdown is not the node leaving")

	rec := newRecorder()
	a2, err := New(e.h, cfg, withHooks(rec.hooks()))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, a2.Close()) })
	c = s.openV2(t, e)
	c.send(t, hello(1, time.Second))
	c.recv(t, wire2.TypeWelcome)
	c.send(t, beatAt(3, time.Millisecond))
	require.Equal(t, uint64(3), c.recv(t, wire2.TypeAck).Ack.Seq)
	n, ok := a2.Tracker().Node(s.id())
	require.True(t, ok)
	require.Equal(t, tracker.Up, n.State)
	require.Equal(t, uint64(0), n.Restarts)
	require.Equal(t, uint64(0), n.LostBeats)
	require.Equal(t, uint8(2), n.Protocol)
}

// A full tracker refuses a new v2 peer with GoAway("too_many_nodes") and an
// orderly close, counted as too_many_nodes.
func TestV2TooManyNodes(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, Config{MaxNodes: 1, PacingWindow: time.Second}, nil)
	s1, s2 := newSender(t), newSender(t)
	c1 := s1.openV2(t, e)
	c1.send(t, hello(1, time.Second))
	c1.recv(t, wire2.TypeWelcome)
	c1.send(t, beatAt(1, 0))
	c1.recv(t, wire2.TypeAck)

	c2 := s2.openV2(t, e)
	g := c2.recv(t, wire2.TypeGoAway).GoAway
	require.Equal(t, metrics.ReasonTooManyNodes, g.Reason)
	require.Less(t, g.RetryAfter, time.Second)
	_, err := c2.r.Next()
	require.ErrorIs(t, err, io.EOF)
	require.Equal(t, float64(1), rejected(t, e, metrics.ReasonTooManyNodes))
}

// After a restart the nodes restored from the store are Unknown, not live
// in this process: their return is paced like a newcomer's (the restart
// storm is what pacing is for), unlike a node the process holds Up.
func TestV2RestoredNodesArePaced(t *testing.T) {
	checkLeaks(t)
	clk := clockwork.NewMock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	dir := t.TempDir()
	cfg := Config{AcceptRate: 1, PacingWindow: 10 * time.Second}
	b := openStore(t, dir)
	e := newEnv(t, cfg, nil, WithClock(clk), WithStore(b, store.WriterConfig{}))
	s1, s2 := newSender(t), newSender(t)
	for i, s := range []*sender{s1, s2} {
		clk.Add(time.Second) // one new stream a second: both admitted
		c := s.openV2(t, e)
		c.send(t, hello(byte(i+1), time.Second))
		c.recv(t, wire2.TypeWelcome)
		c.send(t, beatAt(1, 0))
		c.recv(t, wire2.TypeAck)
	}
	require.NoError(t, e.a.Close())
	require.NoError(t, b.Close())
	require.Zero(t, rejected(t, e, metrics.ReasonPaced))

	// Restart on the same host and store: both nodes come back Unknown.
	b = openStore(t, dir)
	t.Cleanup(func() { _ = b.Close() })
	a2, err := New(e.h, cfg, WithClock(clk), WithStore(b, store.WriterConfig{}))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, a2.Close()) })
	for _, s := range []*sender{s1, s2} {
		st, ok := a2.Tracker().State(s.id())
		require.True(t, ok)
		require.Equal(t, tracker.Unknown, st)
	}
	clk.Add(time.Second)
	c1 := s1.openV2(t, e)
	c1.send(t, hello(1, time.Second))
	c1.recv(t, wire2.TypeWelcome)
	c2 := s2.openV2(t, e) // the same second: past the rate
	g := c2.recv(t, wire2.TypeGoAway).GoAway
	require.Equal(t, "busy", g.Reason, "a restored node is paced")
	require.Equal(t, float64(1), counter(t, a2.Registry(), "heartbeat_rejected_total", "reason", metrics.ReasonPaced), "paced by the new aggregator")
}
