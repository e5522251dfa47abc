package transport_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/clockwork"

	"github.com/p2pbeat/heartbeat/transport"
)

var errBoom = errors.New("boom")

// memNet is a memory network on a mock clock with one listening aggregator.
type memNet struct {
	net   *transport.Network
	clock *clockwork.Mock
	l     *transport.Listener
	d     transport.Dialer
}

func newMemNet(t *testing.T, opts ...transport.NetworkOption) *memNet {
	t.Helper()
	return newMemNetListening(t, nil, opts...)
}

// newMemNetListening is newMemNet with an aggregator that speaks protos.
func newMemNetListening(t *testing.T, protos []protocol.ID, opts ...transport.NetworkOption) *memNet {
	t.Helper()
	checkLeaks(t)
	m := &memNet{clock: clockwork.NewMock(time.Unix(0, 0))}
	m.net = transport.NewNetwork(append([]transport.NetworkOption{transport.WithClock(m.clock)}, opts...)...)
	l, err := m.net.Listen(aggregatorID, protos...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	m.l = l
	m.d = m.net.Dialer(senderID)
	return m
}

func (m *memNet) dial(t *testing.T) (transport.Stream, *transport.ServerStream) {
	t.Helper()
	s, err := m.d.Dial(context.Background(), m.l.AddrInfo())
	require.NoError(t, err)
	return s, m.accept(t)
}

func (m *memNet) accept(t *testing.T) *transport.ServerStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	ss, err := m.l.Accept(ctx)
	require.NoError(t, err)
	return ss
}

// drain empties Changed so that the next receive reports a new change.
func drain(n *transport.Network) {
	select {
	case <-n.Changed():
	default:
	}
}

// requireChanged waits for a Changed signal.
func requireChanged(t *testing.T, n *transport.Network) {
	t.Helper()
	timer := time.NewTimer(patience)
	defer timer.Stop()
	select {
	case <-n.Changed():
	case <-timer.C:
		t.Fatalf("no Changed signal within %s", patience)
	}
}

// requirePending checks that a result has not arrived yet.
func requirePending(t *testing.T, ch <-chan error) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("returned early: %v", err)
	default:
	}
}

func TestMemoryRefuseDials(t *testing.T) {
	m := newMemNet(t)
	m.net.SetFaults(aggregatorID, transport.Faults{RefuseDials: true})
	_, err := m.d.Dial(context.Background(), m.l.AddrInfo())
	require.ErrorIs(t, err, transport.ErrDialFailed)
	require.Equal(t, 0, m.net.Blocked())

	m.net.SetFaults(aggregatorID, transport.Faults{})
	s, ss := m.dial(t)
	require.NoError(t, s.Close())
	require.NoError(t, ss.Close())
}

func TestMemoryHangDialsUntilCancel(t *testing.T) {
	m := newMemNet(t)
	m.net.SetFaults(aggregatorID, transport.Faults{HangDials: true})
	drain(m.net)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dialed := result(func() error {
		_, err := m.d.Dial(ctx, m.l.AddrInfo())
		return err
	})
	// The dial is counted before Changed is signalled.
	requireChanged(t, m.net)
	require.Equal(t, 1, m.net.Blocked())
	// No dial timeout: time alone never ends the hang.
	m.clock.Add(time.Hour)
	requirePending(t, dialed)

	cancel()
	err := await(t, "Dial", dialed, func() {})
	require.ErrorIs(t, err, transport.ErrDialFailed)
	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, 0, m.net.Blocked())
}

func TestMemoryHangDialsUntilDialTimeout(t *testing.T) {
	m := newMemNet(t, transport.WithMemoryDialTimeout(10*time.Second))
	m.net.SetFaults(aggregatorID, transport.Faults{HangDials: true})
	dialed := result(func() error {
		_, err := m.d.Dial(context.Background(), m.l.AddrInfo())
		return err
	})
	waitBlocked(t, m.net, 1)
	m.clock.Add(10*time.Second - time.Millisecond)
	requirePending(t, dialed)
	m.clock.Add(time.Millisecond)
	err := await(t, "Dial", dialed, func() {})
	require.ErrorIs(t, err, transport.ErrDialFailed)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	waitBlocked(t, m.net, 0)
}

func TestMemoryWriteErr(t *testing.T) {
	m := newMemNet(t)
	s, ss := m.dial(t)
	m.net.SetFaults(aggregatorID, transport.Faults{WriteErr: errBoom})
	_, err := s.Write([]byte("lost\n"))
	require.ErrorIs(t, err, errBoom)
	require.NotErrorIs(t, err, transport.ErrReset)

	// The stream was not reset: that is the caller's decision.
	m.net.SetFaults(aggregatorID, transport.Faults{})
	writeLines(t, s, []byte("kept\n"))
	require.NoError(t, s.Close())
	got, err := readEnd(t, ss)
	require.ErrorIs(t, err, io.EOF)
	require.Equal(t, "kept\n", string(got))
}

func TestMemoryStallWritesUntilReset(t *testing.T) {
	m := newMemNet(t)
	s, ss := m.dial(t)
	m.net.SetFaults(aggregatorID, transport.Faults{StallWrites: true})
	written := result(func() error {
		_, err := s.Write([]byte("stuck\n"))
		return err
	})
	waitBlocked(t, m.net, 1)
	m.clock.Add(time.Hour) // no write timeout: time alone never ends it
	requirePending(t, written)

	require.NoError(t, ss.Reset())
	// Uncounted by the reset itself, before the writer even runs.
	require.Equal(t, 0, m.net.Blocked())
	require.ErrorIs(t, await(t, "Write", written, func() {}), transport.ErrReset)
	require.ErrorIs(t, s.WaitRemote(), transport.ErrReset)
}

func TestMemoryStallWritesUntilLocalClose(t *testing.T) {
	m := newMemNet(t)
	s, _ := m.dial(t)
	m.net.SetFaults(aggregatorID, transport.Faults{StallWrites: true})
	written := result(func() error {
		_, err := s.Write([]byte("stuck\n"))
		return err
	})
	waitBlocked(t, m.net, 1)
	require.NoError(t, s.Close())
	require.Equal(t, 0, m.net.Blocked())
	require.ErrorIs(t, await(t, "Write", written, func() {}), net.ErrClosed)
}

func TestMemoryStallWritesUntilWriteTimeout(t *testing.T) {
	m := newMemNet(t, transport.WithMemoryWriteTimeout(10*time.Second))
	s, ss := m.dial(t)
	m.net.SetFaults(aggregatorID, transport.Faults{StallWrites: true})
	written := result(func() error {
		_, err := s.Write([]byte("stuck\n"))
		return err
	})
	waitBlocked(t, m.net, 1)
	m.clock.Add(10*time.Second - time.Millisecond)
	requirePending(t, written)
	m.clock.Add(time.Millisecond)
	err := await(t, "Write", written, func() {})
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	waitBlocked(t, m.net, 0)
	require.NoError(t, s.Reset())
	require.NoError(t, ss.Reset())
}

func TestMemoryWindowBlocksUntilRead(t *testing.T) {
	m := newMemNet(t, transport.WithWindow(8))
	s, ss := m.dial(t)
	msg := []byte("0123456789abcdefghij") // 20 bytes: 2.5 windows
	var n int
	written := result(func() error {
		var err error
		n, err = s.Write(msg)
		return err
	})
	waitBlocked(t, m.net, 1)
	requirePending(t, written)

	var got []byte
	buf := make([]byte, 5)
	for len(got) < len(msg) {
		k, err := ss.Read(buf)
		require.NoError(t, err)
		got = append(got, buf[:k]...)
	}
	require.NoError(t, await(t, "Write", written, func() {}))
	require.Equal(t, len(msg), n)
	require.Equal(t, msg, got)
	require.Equal(t, 0, m.net.Blocked())
	require.NoError(t, s.Close())
	_, err := ss.Read(buf)
	require.ErrorIs(t, err, io.EOF)
}

func TestMemoryWindowWriteTimeout(t *testing.T) {
	m := newMemNet(t, transport.WithWindow(8), transport.WithMemoryWriteTimeout(10*time.Second))
	s, ss := m.dial(t)
	var n int
	written := result(func() error {
		var err error
		n, err = s.Write(make([]byte, 20))
		return err
	})
	waitBlocked(t, m.net, 1)
	m.clock.Add(10*time.Second - time.Millisecond)
	requirePending(t, written)
	m.clock.Add(time.Millisecond)
	err := await(t, "Write", written, func() {})
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	require.Equal(t, 8, n, "the window's worth was written")
	waitBlocked(t, m.net, 0)

	// The deadline is per Write: once the reader drains, the next one
	// succeeds without any time passing.
	require.Equal(t, make([]byte, 8), readN(t, ss, 8))
	k, err := s.Write(make([]byte, 8))
	require.NoError(t, err)
	require.Equal(t, 8, k)
	require.NoError(t, s.Reset())
}

func TestMemoryServerCloseReleasesFullWindow(t *testing.T) {
	m := newMemNet(t, transport.WithWindow(8))
	s, ss := m.dial(t)
	written := result(func() error {
		_, err := s.Write(make([]byte, 20))
		return err
	})
	waitBlocked(t, m.net, 1)
	require.NoError(t, ss.Close())
	require.Equal(t, 0, m.net.Blocked())
	// Like a muxer, the sender's bytes are accepted and dropped.
	require.NoError(t, await(t, "Write", written, func() {}))
	require.Equal(t, io.EOF, s.WaitRemote())
	require.NoError(t, s.Close())
}

func TestMemoryChangedSignals(t *testing.T) {
	m := newMemNet(t)
	drain(m.net)
	s, err := m.d.Dial(context.Background(), m.l.AddrInfo())
	require.NoError(t, err)
	requireChanged(t, m.net) // dialled

	ss := m.accept(t)
	requireChanged(t, m.net) // accepted

	writeLines(t, s, []byte("hi\n"))
	requireChanged(t, m.net) // bytes arrived

	require.Equal(t, []byte("hi\n"), readN(t, ss, 3))
	requireChanged(t, m.net) // bytes read
	require.NoError(t, s.Close())
}

func TestMemoryListenerClose(t *testing.T) {
	m := newMemNet(t)
	_, err := m.net.Listen(aggregatorID)
	require.Error(t, err, "one listener per id")

	// Dialled but never accepted: reset when the aggregator goes away.
	pending, err := m.d.Dial(context.Background(), m.l.AddrInfo())
	require.NoError(t, err)
	require.NoError(t, m.l.Close())
	require.NoError(t, m.l.Close())
	require.ErrorIs(t, pending.WaitRemote(), transport.ErrReset)

	_, err = m.l.Accept(context.Background())
	require.ErrorIs(t, err, net.ErrClosed)
	_, err = m.d.Dial(context.Background(), m.l.AddrInfo())
	require.ErrorIs(t, err, transport.ErrDialFailed)

	// The aggregator comes back.
	l2, err := m.net.Listen(aggregatorID)
	require.NoError(t, err)
	defer l2.Close()
	s, err := m.d.Dial(context.Background(), l2.AddrInfo())
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	ss, err := l2.Accept(ctx)
	require.NoError(t, err)
	require.Equal(t, senderID, ss.RemotePeer())
	require.NoError(t, s.Close())
}

func TestMemoryAcceptHonoursContext(t *testing.T) {
	m := newMemNet(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := m.l.Accept(ctx)
	require.ErrorIs(t, err, context.Canceled)
}

func TestMemoryAcceptInDialOrder(t *testing.T) {
	m := newMemNet(t)
	first, err := m.net.Dialer(senderID).Dial(context.Background(), m.l.AddrInfo())
	require.NoError(t, err)
	second, err := m.net.Dialer(thirdSenderID).Dial(context.Background(), m.l.AddrInfo())
	require.NoError(t, err)
	require.Equal(t, senderID, m.accept(t).RemotePeer())
	require.Equal(t, thirdSenderID, m.accept(t).RemotePeer())
	require.NoError(t, first.Close())
	require.NoError(t, second.Close())
}

// Faults are per target: another aggregator is unaffected.
func TestMemoryFaultsArePerTarget(t *testing.T) {
	m := newMemNet(t)
	l2, err := m.net.Listen(secondAggrID)
	require.NoError(t, err)
	defer l2.Close()
	m.net.SetFaults(aggregatorID, transport.Faults{RefuseDials: true})
	s, err := m.d.Dial(context.Background(), l2.AddrInfo())
	require.NoError(t, err)
	require.NoError(t, s.Close())
}
