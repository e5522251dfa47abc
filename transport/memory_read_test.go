package transport_test

import (
	"context"
	"io"
	"net"
	"testing"

	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/transport"
)

// The memory transport's own promises about two-way streams: how a parked
// Read counts in Blocked (the root harness waits on it to know the Service
// is idle), the server's send window, and protocol settings.

// newV2MemNet is a memory network whose aggregator speaks v2 and v1; its
// dialer offers the default, so streams are v2.
func newV2MemNet(t *testing.T, opts ...transport.NetworkOption) *memNet {
	t.Helper()
	return newMemNetListening(t, []protocol.ID{v2, v1}, opts...)
}

// startRead starts s.Read into a buffer of size n.
func startRead(s transport.Stream, n int) (<-chan error, *[]byte) {
	var got []byte
	ch := result(func() error {
		buf := make([]byte, n)
		k, err := s.Read(buf)
		got = buf[:k]
		return err
	})
	return ch, &got
}

func TestMemoryParkedReadCountsAsBlocked(t *testing.T) {
	m := newV2MemNet(t)
	s, ss := m.dial(t)
	require.Equal(t, v2, s.Protocol())

	read, got := startRead(s, 8)
	waitBlocked(t, m.net, 1)
	requirePending(t, read)
	// Uncounted by the server's Write itself, before the reader runs.
	serverWrite(t, ss, []byte("ack"))
	require.Equal(t, 0, m.net.Blocked())
	require.NoError(t, await(t, "Read", read, func() {}))
	require.Equal(t, []byte("ack"), *got)

	// Bytes already there: Read does not park.
	serverWrite(t, ss, []byte("ack2"))
	n, err := s.Read(make([]byte, 8))
	require.NoError(t, err)
	require.Equal(t, 4, n)
	require.Equal(t, 0, m.net.Blocked())

	// Released by each way the stream can end, uncounted at once.
	ends := map[string]func(s transport.Stream, ss *transport.ServerStream) error{
		"server CloseWrite": func(_ transport.Stream, ss *transport.ServerStream) error { return ss.CloseWrite() },
		"server Close":      func(_ transport.Stream, ss *transport.ServerStream) error { return ss.Close() },
		"server Reset":      func(_ transport.Stream, ss *transport.ServerStream) error { return ss.Reset() },
		"local Reset":       func(s transport.Stream, _ *transport.ServerStream) error { return s.Reset() },
		"local Close":       func(s transport.Stream, _ *transport.ServerStream) error { return s.Close() },
	}
	want := map[string]error{
		"server CloseWrite": io.EOF, "server Close": io.EOF,
		"server Reset": transport.ErrReset, "local Reset": transport.ErrReset, "local Close": net.ErrClosed,
	}
	require.NoError(t, s.Close())
	require.NoError(t, ss.Close())
	for name, end := range ends {
		t.Run(name, func(t *testing.T) {
			s, ss := m.dial(t)
			read, _ := startRead(s, 8)
			waitBlocked(t, m.net, 1)
			require.NoError(t, end(s, ss))
			require.Equal(t, 0, m.net.Blocked())
			require.ErrorIs(t, await(t, "Read", read, func() {}), want[name])
			_ = s.Reset()
			_ = ss.Reset()
		})
	}
}

// A Read and a stalled Write park side by side, each counted once.
func TestMemoryReadAndStalledWriteBothCount(t *testing.T) {
	m := newV2MemNet(t)
	s, ss := m.dial(t)
	m.net.SetFaults(aggregatorID, transport.Faults{StallWrites: true})
	read, _ := startRead(s, 8)
	written := result(func() error {
		_, err := s.Write([]byte("beat\n"))
		return err
	})
	waitBlocked(t, m.net, 2)
	require.NoError(t, s.Reset())
	require.Equal(t, 0, m.net.Blocked())
	require.ErrorIs(t, await(t, "Read", read, func() {}), transport.ErrReset)
	require.ErrorIs(t, await(t, "Write", written, func() {}), transport.ErrReset)
	_ = ss.Reset()
}

// The server's writes share the window rule: they wait for the sender to
// read, and never count in Blocked (the server is the test's side).
func TestMemoryServerWriteWaitsForRead(t *testing.T) {
	m := newV2MemNet(t, transport.WithWindow(8))
	s, ss := m.dial(t)
	msg := []byte("0123456789abcdefghij") // 2.5 windows
	written := result(func() error {
		_, err := ss.Write(msg)
		return err
	})
	// The first window's worth arrives; the rest waits for room.
	require.Equal(t, msg[:8], readFull(t, s, 8))
	require.Equal(t, msg[8:], readFull(t, s, len(msg)-8))
	require.NoError(t, await(t, "server Write", written, func() {}))
	require.Equal(t, 0, m.net.Blocked())

	// A Reset releases a server write waiting for room.
	written = result(func() error {
		_, err := ss.Write(make([]byte, 20))
		return err
	})
	require.Equal(t, make([]byte, 8), readFull(t, s, 8))
	require.NoError(t, s.Reset())
	require.ErrorIs(t, await(t, "server Write", written, func() {}), transport.ErrReset)
	_, err := ss.Write([]byte("x"))
	require.ErrorIs(t, err, transport.ErrReset)
}

func TestMemoryServerWriteAfterCloseWrite(t *testing.T) {
	m := newV2MemNet(t)
	s, ss := m.dial(t)
	require.NoError(t, ss.CloseWrite())
	require.NoError(t, ss.CloseWrite(), "idempotent")
	_, err := ss.Write([]byte("x"))
	require.ErrorIs(t, err, net.ErrClosed)
	require.Equal(t, io.EOF, s.WaitRemote())
	// The server still reads.
	writeLines(t, s, []byte("bye\n"))
	require.Equal(t, []byte("bye\n"), readN(t, ss, 4))
	require.NoError(t, s.Close())
	require.NoError(t, ss.Close())
}

func TestMemoryListenProtocols(t *testing.T) {
	n := transport.NewNetwork()
	for name, protos := range map[string][]protocol.ID{
		"unknown":  {"/fil/heartbeat/3.0.0"},
		"repeated": {v1, v1},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := n.Listen(aggregatorID, protos...)
			require.ErrorContains(t, err, "protocols")
		})
	}
	require.PanicsWithError(t, `transport: protocols: unknown protocol id "fil/heartbeat/9"`+
		`, want /fil/heartbeat/2.0.0 or fil/heartbeat/1.0.0`, func() { n.Dialer(senderID, "fil/heartbeat/9") })

	// Listening with nothing named is a legacy, v1-only aggregator.
	l, err := n.Listen(aggregatorID)
	require.NoError(t, err)
	defer l.Close()
	s, err := n.Dialer(senderID).Dial(context.Background(), l.AddrInfo())
	require.NoError(t, err)
	require.Equal(t, v1, s.Protocol())
	require.NoError(t, s.Reset())
}
