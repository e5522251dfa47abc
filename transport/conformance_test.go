package transport_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/transport"
	"github.com/p2pbeat/heartbeat/wire"
)

// patience bounds every wait in these tests. It is a failure guard, never a
// pace: a passing test does not wait for it.
const patience = 30 * time.Second

// stallTimeout is the write timeout of the stalled-reader case: the only
// real time these tests rely on, and only as a deadline.
const stallTimeout = 300 * time.Millisecond

// env is one transport under test plus a receiver the suite controls, in
// the manner of go-libp2p's peerstore addr_book_suite: the suite states the
// behaviour once and each implementation supplies an env.
//
// A server stream that nobody reads is a stalled reader: the suite stops
// reading simply by not calling Read.
type env interface {
	// Dialer returns the sender under test.
	Dialer() transport.Dialer
	// Target is the listening receiver's address.
	Target() peer.AddrInfo
	// Accept returns the receiver's end of the next stream dialled to
	// Target, failing the test if none comes within patience.
	Accept(t *testing.T) serverStream
	// StopListening makes Target unreachable and aborts the streams it
	// accepted, like an aggregator that died.
	StopListening(t *testing.T)
	// Unreachable returns a target nobody listens on.
	Unreachable(t *testing.T) peer.AddrInfo
	// Hanging returns a target whose dials hang, and a func that returns
	// once a dial to it is in progress.
	Hanging(t *testing.T) (peer.AddrInfo, func(t *testing.T))
}

// serverStream is the receiver's end of a heartbeat stream.
type serverStream interface {
	io.Reader
	io.Writer
	CloseWrite() error
	Close() error
	Reset() error
	Protocol() protocol.ID
}

// envFactory builds a fresh env whose Dialer's writes time out after
// writeTimeout (0: the implementation's default). Everything it starts is
// stopped by t.Cleanup.
type envFactory func(t *testing.T, writeTimeout time.Duration, opts ...envOption) env

// envConfig is the protocols an env's two ends speak.
type envConfig struct {
	listen []protocol.ID // the receiver's; nil: v1 only, a legacy aggregator
	dial   []protocol.ID // the Dialer's; nil: its default
}

type envOption func(*envConfig)

// listening makes the receiver speak ids.
func listening(ids ...protocol.ID) envOption {
	return func(c *envConfig) { c.listen = ids }
}

// offering makes the Dialer offer ids.
func offering(ids ...protocol.ID) envOption {
	return func(c *envConfig) { c.dial = ids }
}

func newEnvConfig(opts []envOption) envConfig {
	var c envConfig
	for _, o := range opts {
		o(&c)
	}
	return c
}

// runConformance runs the whole suite against one implementation.
func runConformance(t *testing.T, newEnv envFactory) {
	cases := []struct {
		name string
		run  func(t *testing.T, newEnv envFactory)
	}{
		{"WriteReachesServer", testWriteReachesServer},
		{"ServerCloseEndsWaitRemoteWithEOF", testServerClose},
		{"ServerResetEndsWaitRemoteAndWrite", testServerReset},
		{"LocalReset", testLocalReset},
		{"LocalClose", testLocalClose},
		{"HalfCloseThenServerClose", testHalfClose},
		{"HalfCloseThenReset", testHalfCloseThenReset},
		{"AggregatorGoneMidStream", testAggregatorGone},
		{"ResetAndCloseAreIdempotent", testIdempotent},
		{"ResetUnblocksWrite", testResetUnblocksWrite},
		{"StalledReaderWriteTimesOut", testStalledReader},
		{"StreamsAreIndependent", testIndependentStreams},
		{"DialUnreachableFailsFast", testDialUnreachable},
		{"DialAfterStopListeningFails", testDialStopped},
		{"DialWithCancelledContext", testDialCancelled},
		{"DialCancelledWhileHanging", testDialCancelledWhileHanging},
		{"NegotiatesProtocol", testNegotiatesProtocol},
		{"NoCommonProtocolFailsDial", testNoCommonProtocol},
		{"ServerWritesReachRead", testServerWritesReachRead},
		{"ServerCloseEndsReadWithEOF", testServerCloseEndsRead},
		{"ServerResetEndsRead", testServerResetEndsRead},
		{"LocalResetUnblocksRead", testLocalResetUnblocksRead},
		{"LocalCloseUnblocksRead", testLocalCloseUnblocksRead},
		{"ReadAfterHalfClose", testReadAfterHalfClose},
		{"ReadAndWriteConcurrently", testReadWriteConcurrently},
		{"WaitRemoteDiscardsWhatServerWrites", testWaitRemoteDiscards},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			checkLeaks(t)
			c.run(t, newEnv)
		})
	}
}

func TestConformanceLibp2p(t *testing.T) { runConformance(t, newLibp2pEnv) }

func TestConformanceMemory(t *testing.T) { runConformance(t, newMemoryEnv) }

// dial opens a stream to e's target and accepts its server end.
func dial(t *testing.T, e env) (transport.Stream, serverStream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	s, err := e.Dialer().Dial(ctx, e.Target())
	require.NoError(t, err)
	return s, e.Accept(t)
}

// lines returns n heartbeat lines as the wire carries them.
func lines(t *testing.T, n int) []byte {
	t.Helper()
	var out []byte
	for i := range n {
		var err error
		out, err = wire.AppendLine(out, wire.Heartbeat{Head: "{ bafy2bzaceabc }", Height: uint64(i), Nickname: "n1"})
		require.NoError(t, err)
	}
	return out
}

// writeLines writes each line of b with its own Write, as the sender does.
func writeLines(t *testing.T, s transport.Stream, b []byte) {
	t.Helper()
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		n, err := s.Write(line)
		require.NoError(t, err)
		require.Equal(t, len(line), n)
	}
}

// result runs f in a goroutine and returns its error on a channel.
func result(f func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

// await returns the error f eventually returns, failing the test (after
// unblocking f with unblock) if it does not return within patience.
func await(t *testing.T, what string, ch <-chan error, unblock func()) error {
	t.Helper()
	timer := time.NewTimer(patience)
	defer timer.Stop()
	select {
	case err := <-ch:
		return err
	case <-timer.C:
		unblock()
		<-ch
		t.Fatalf("%s did not return within %s", what, patience)
		return nil
	}
}

// readN reads exactly n bytes from the server end.
func readN(t *testing.T, ss serverStream, n int) []byte {
	t.Helper()
	buf := make([]byte, n)
	err := await(t, "server read", result(func() error {
		_, err := io.ReadFull(ss, buf)
		return err
	}), func() { _ = ss.Reset() })
	require.NoError(t, err)
	return buf
}

// readEnd reads from the server end until an error and returns it, with
// the bytes read before it.
func readEnd(t *testing.T, ss serverStream) ([]byte, error) {
	t.Helper()
	var got []byte
	err := await(t, "server read to end", result(func() error {
		buf := make([]byte, 4096)
		for {
			n, err := ss.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				return err
			}
		}
	}), func() { _ = ss.Reset() })
	return got, err
}

// waitRemote returns s.WaitRemote's result.
func waitRemote(t *testing.T, s transport.Stream) error {
	t.Helper()
	return await(t, "WaitRemote", result(s.WaitRemote), func() { _ = s.Reset() })
}

func testWriteReachesServer(t *testing.T, newEnv envFactory) {
	e := newEnv(t, 0)
	s, ss := dial(t, e)
	want := lines(t, 3)
	writeLines(t, s, want)
	require.Equal(t, want, readN(t, ss, len(want)))

	// More after a partial read, then an orderly end: the server sees
	// exactly the bytes, then EOF.
	more := lines(t, 2)
	writeLines(t, s, more)
	require.NoError(t, s.Close())
	got, err := readEnd(t, ss)
	require.ErrorIs(t, err, io.EOF)
	require.Equal(t, more, got)
	require.NoError(t, waitRemote(t, s))
	require.NoError(t, ss.Close())
}

func testServerClose(t *testing.T, newEnv envFactory) {
	e := newEnv(t, 0)
	// Nothing is written: the end is noticed without waiting for a write.
	s, ss := dial(t, e)
	require.NoError(t, ss.Close())
	err := waitRemote(t, s)
	require.Equal(t, io.EOF, err, "WaitRemote after the server's Close: %v", err)
	require.NoError(t, s.Close())
}

func testServerReset(t *testing.T, newEnv envFactory) {
	e := newEnv(t, 0)
	s, ss := dial(t, e)
	writeLines(t, s, lines(t, 1))

	require.NoError(t, ss.Reset())
	end := waitRemote(t, s)
	require.ErrorIs(t, end, transport.ErrReset)
	// Both say who reset, as yamux does: the sender's log names the cause.
	var se *network.StreamError
	require.ErrorAs(t, end, &se)
	require.True(t, se.Remote, "a reset by the server is remote: %v", end)
	_, err := s.Write(lines(t, 1))
	require.ErrorIs(t, err, transport.ErrReset)
	require.NotErrorIs(t, err, os.ErrDeadlineExceeded)
	require.NoError(t, s.Reset())
}

func testLocalReset(t *testing.T, newEnv envFactory) {
	e := newEnv(t, 0)
	s, ss := dial(t, e)
	writeLines(t, s, lines(t, 1))

	require.NoError(t, s.Reset())
	_, err := s.Write(lines(t, 1))
	require.ErrorIs(t, err, transport.ErrReset)
	require.ErrorIs(t, waitRemote(t, s), transport.ErrReset)

	// The server sees the reset, not an orderly end.
	_, err = readEnd(t, ss)
	require.ErrorIs(t, err, transport.ErrReset)
	require.NoError(t, ss.Reset())
}

func testLocalClose(t *testing.T, newEnv envFactory) {
	e := newEnv(t, 0)
	s, ss := dial(t, e)
	want := lines(t, 2)
	writeLines(t, s, want)

	require.NoError(t, s.Close())
	require.NoError(t, waitRemote(t, s))
	_, err := s.Write(lines(t, 1))
	require.ErrorIs(t, err, net.ErrClosed)

	got, err := readEnd(t, ss)
	require.ErrorIs(t, err, io.EOF)
	require.Equal(t, want, got)
	require.NoError(t, ss.Close())
}

// testHalfClose is the clean stop: the sender half-closes, the server reads
// everything then EOF and closes in turn, and the sender sees that EOF.
func testHalfClose(t *testing.T, newEnv envFactory) {
	e := newEnv(t, 0)
	s, ss := dial(t, e)
	want := lines(t, 2)
	writeLines(t, s, want)

	require.NoError(t, s.CloseWrite())
	require.NoError(t, s.CloseWrite(), "idempotent")
	_, err := s.Write(lines(t, 1))
	require.Error(t, err, "no write after CloseWrite")
	got, err := readEnd(t, ss)
	require.ErrorIs(t, err, io.EOF)
	require.Equal(t, want, got)

	// The sender's read side is still open: it sees the server's end.
	require.NoError(t, ss.Close())
	require.Equal(t, io.EOF, waitRemote(t, s))
	require.NoError(t, s.Close())
	require.NoError(t, s.CloseWrite(), "nil after Close")
}

// testHalfCloseThenReset: a server that never answers the half-close; the
// sender gives up with Reset, which ends WaitRemote.
func testHalfCloseThenReset(t *testing.T, newEnv envFactory) {
	e := newEnv(t, 0)
	s, ss := dial(t, e)
	writeLines(t, s, lines(t, 1))
	require.NoError(t, s.CloseWrite())
	waited := result(s.WaitRemote)
	readN(t, ss, len(lines(t, 1)))
	require.NoError(t, s.Reset())
	require.ErrorIs(t, await(t, "WaitRemote", waited, func() {}), transport.ErrReset)
	_ = ss.Reset()
}

func testAggregatorGone(t *testing.T, newEnv envFactory) {
	e := newEnv(t, 0)
	s, _ := dial(t, e)
	writeLines(t, s, lines(t, 1))
	e.StopListening(t)
	// A lost connection is a reset, never an orderly end.
	require.ErrorIs(t, waitRemote(t, s), transport.ErrReset)
	_, err := s.Write(lines(t, 1))
	require.ErrorIs(t, err, transport.ErrReset)
	require.NoError(t, s.Reset())
}

func testIdempotent(t *testing.T, newEnv envFactory) {
	e := newEnv(t, 0)

	closed, ssClosed := dial(t, e)
	require.NoError(t, closed.Close())
	require.NoError(t, closed.Close())
	require.NoError(t, closed.Reset())
	require.NoError(t, closed.Reset())
	require.NoError(t, waitRemote(t, closed), "the first of Close and Reset decides")
	_, err := readEnd(t, ssClosed)
	require.ErrorIs(t, err, io.EOF)
	_ = ssClosed.Close()

	reset, ssReset := dial(t, e)
	require.NoError(t, reset.Reset())
	require.NoError(t, reset.Reset())
	require.NoError(t, reset.Close())
	require.NoError(t, reset.Close())
	require.ErrorIs(t, waitRemote(t, reset), transport.ErrReset)
	// The server's end is the implementation's own (libp2p's Close after a
	// reset reports the reset), so only the sender's calls are checked.
	_ = ssReset.Close()

	// Reset and Close racing each other and a WaitRemote.
	racing, ssRacing := dial(t, e)
	waited := result(racing.WaitRemote)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = racing.Reset()
	}()
	_ = racing.Close()
	<-done
	err = await(t, "WaitRemote", waited, func() {})
	if err != nil {
		require.ErrorIs(t, err, transport.ErrReset)
	}
	_ = ssRacing.Reset()
}

func testResetUnblocksWrite(t *testing.T, newEnv envFactory) {
	// A generous write timeout: only the Reset may end this Write.
	e := newEnv(t, time.Hour)
	s, ss := dial(t, e)

	big := make([]byte, 4<<20) // far more than any window
	written := result(func() error {
		_, err := s.Write(big)
		return err
	})
	// Bytes are flowing, and the write cannot finish: the server takes one.
	readN(t, ss, 1)
	require.NoError(t, s.Reset())
	err := await(t, "Write", written, func() {})
	require.ErrorIs(t, err, transport.ErrReset)
	require.NotErrorIs(t, err, os.ErrDeadlineExceeded)
	require.ErrorIs(t, waitRemote(t, s), transport.ErrReset)
	require.NoError(t, ss.Reset())
}

func testStalledReader(t *testing.T, newEnv envFactory) {
	e := newEnv(t, stallTimeout)
	s, ss := dial(t, e)

	// The server never reads: once the window is full the write blocks
	// until its deadline.
	big := make([]byte, 4<<20)
	var n int
	err := await(t, "Write", result(func() error {
		var err error
		n, err = s.Write(big)
		return err
	}), func() { _ = s.Reset() })
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	require.NotErrorIs(t, err, transport.ErrReset)
	require.Less(t, n, len(big))

	// A timed-out write leaves the stream to the caller, who resets it.
	require.NoError(t, s.Reset())
	require.ErrorIs(t, waitRemote(t, s), transport.ErrReset)
	require.NoError(t, ss.Reset())
}

func testIndependentStreams(t *testing.T, newEnv envFactory) {
	e := newEnv(t, 0)
	a, ssA := dial(t, e)
	b, ssB := dial(t, e)

	require.NoError(t, a.Reset())
	require.ErrorIs(t, waitRemote(t, a), transport.ErrReset)

	want := lines(t, 2)
	writeLines(t, b, want)
	require.Equal(t, want, readN(t, ssB, len(want)))
	require.NoError(t, b.Close())
	require.NoError(t, waitRemote(t, b))
	require.NoError(t, ssA.Reset())
	require.NoError(t, ssB.Close())
}

func testDialUnreachable(t *testing.T, newEnv envFactory) {
	e := newEnv(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	s, err := e.Dialer().Dial(ctx, e.Unreachable(t))
	require.Nil(t, s)
	require.ErrorIs(t, err, transport.ErrDialFailed)
	// Fast: refused, not timed out.
	require.NotErrorIs(t, err, context.DeadlineExceeded)
	require.NoError(t, ctx.Err())
}

func testDialStopped(t *testing.T, newEnv envFactory) {
	e := newEnv(t, 0)
	e.StopListening(t)
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	s, err := e.Dialer().Dial(ctx, e.Target())
	require.Nil(t, s)
	require.ErrorIs(t, err, transport.ErrDialFailed)
	require.NotErrorIs(t, err, context.DeadlineExceeded)
}

func testDialCancelled(t *testing.T, newEnv envFactory) {
	e := newEnv(t, 0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s, err := e.Dialer().Dial(ctx, e.Target())
	require.Nil(t, s)
	require.ErrorIs(t, err, transport.ErrDialFailed)
	require.ErrorIs(t, err, context.Canceled)
}

func testDialCancelledWhileHanging(t *testing.T, newEnv envFactory) {
	e := newEnv(t, 0)
	target, dialing := e.Hanging(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dialed := result(func() error {
		s, err := e.Dialer().Dial(ctx, target)
		if s != nil {
			_ = s.Reset()
			return errors.New("dial to a hanging target succeeded")
		}
		return err
	})
	dialing(t)
	cancel()
	err := await(t, "Dial", dialed, func() {})
	require.ErrorIs(t, err, transport.ErrDialFailed)
	require.ErrorIs(t, err, context.Canceled)
}
