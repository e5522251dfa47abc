package transport_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"testing"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/transport"
	"github.com/p2pbeat/heartbeat/wire"
)

// The two-way half of the conformance suite: negotiation, and the sender
// reading what the receiver writes (v2's Welcome, Ack and GoAway frames).

const (
	v1 = protocol.ID(wire.ProtocolID)
	v2 = protocol.ID(wire.ProtocolIDV2)
)

// v2env is an env whose receiver speaks v2 and v1, as our aggregator does;
// its Dialer offers its default (v2, then v1), so v2 is negotiated.
func v2env(t *testing.T, newEnv envFactory) env {
	return newEnv(t, 0, listening(v2, v1))
}

func testNegotiatesProtocol(t *testing.T, newEnv envFactory) {
	require.Equal(t, []protocol.ID{v2, v1}, transport.DefaultProtocols(), "auto: v2 first")
	cases := []struct {
		name          string
		listen, offer []protocol.ID
		want          protocol.ID
	}{
		{"auto to v2 and v1", []protocol.ID{v2, v1}, nil, v2},
		{"auto to v1 only", []protocol.ID{v1}, nil, v1},
		{"auto to v2 only", []protocol.ID{v2}, nil, v2},
		{"v1 only to v2 and v1", []protocol.ID{v2, v1}, []protocol.ID{v1}, v1},
		{"v2 only to v2 and v1", []protocol.ID{v2, v1}, []protocol.ID{v2}, v2},
		{"v1 preferred to v2 and v1", []protocol.ID{v2, v1}, []protocol.ID{v1, v2}, v1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			opts := []envOption{listening(c.listen...)}
			if c.offer != nil {
				opts = append(opts, offering(c.offer...))
			}
			e := newEnv(t, 0, opts...)
			s, ss := dial(t, e)
			require.Equal(t, c.want, s.Protocol())
			require.Equal(t, c.want, ss.Protocol())
			// The negotiated stream carries bytes both ways.
			writeLines(t, s, lines(t, 1))
			require.Equal(t, lines(t, 1), readN(t, ss, len(lines(t, 1))))
			require.NoError(t, s.Close())
			_ = ss.Close()
		})
	}
}

// testNoCommonProtocol: a v2-only sender and a v1-only (legacy) receiver
// have nothing to speak; the dial fails, at once, and the receiver never
// gets a stream.
func testNoCommonProtocol(t *testing.T, newEnv envFactory) {
	e := newEnv(t, 0, listening(v1), offering(v2))
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	s, err := e.Dialer().Dial(ctx, e.Target())
	require.Nil(t, s)
	require.ErrorIs(t, err, transport.ErrDialFailed)
	require.ErrorContains(t, err, "protocols not supported")
	require.NotErrorIs(t, err, context.DeadlineExceeded)

	// The same receiver still takes a sender that offers v1.
	e2 := newEnv(t, 0, listening(v1), offering(v2, v1))
	s2, ss2 := dial(t, e2)
	require.Equal(t, v1, s2.Protocol())
	require.NoError(t, s2.Close())
	_ = ss2.Close()
}

// frames returns n distinct payloads standing for the aggregator's frames,
// the last one longer than the libp2p stream's read buffer.
func frames(n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = fmt.Appendf(nil, "ack %d;", i)
	}
	out[n-1] = bytes.Repeat([]byte("welcome;"), 300) // 2400 bytes
	return out
}

// readAll reads from s until an error and returns the bytes before it.
func readAll(t *testing.T, s transport.Stream) ([]byte, error) {
	t.Helper()
	var got []byte
	err := await(t, "Read to end", result(func() error {
		buf := make([]byte, 100)
		for {
			n, err := s.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				return err
			}
		}
	}), func() { _ = s.Reset() })
	return got, err
}

// readFull reads exactly n bytes from s.
func readFull(t *testing.T, s transport.Stream, n int) []byte {
	t.Helper()
	buf := make([]byte, n)
	err := await(t, "Read", result(func() error {
		_, err := io.ReadFull(s, buf)
		return err
	}), func() { _ = s.Reset() })
	require.NoError(t, err)
	return buf
}

// serverWrite writes b from the receiver's end.
func serverWrite(t *testing.T, ss serverStream, b []byte) {
	t.Helper()
	n, err := ss.Write(b)
	require.NoError(t, err)
	require.Equal(t, len(b), n)
}

func testServerWritesReachRead(t *testing.T, newEnv envFactory) {
	e := v2env(t, newEnv)
	s, ss := dial(t, e)
	var want []byte
	for _, f := range frames(4) {
		serverWrite(t, ss, f)
		want = append(want, f...)
	}
	// In order, whatever the reads' sizes.
	require.Equal(t, want, readFull(t, s, len(want)))

	// The server half-closes: Read sees EOF after the bytes, and the
	// sender can still write to the server.
	serverWrite(t, ss, []byte("goaway"))
	require.NoError(t, ss.CloseWrite())
	got, err := readAll(t, s)
	require.Equal(t, io.EOF, err, "Read after the server's CloseWrite: %v", err)
	require.Equal(t, []byte("goaway"), got)
	n, err := s.Read(make([]byte, 8))
	require.Equal(t, 0, n)
	require.Equal(t, io.EOF, err, "EOF again")

	writeLines(t, s, lines(t, 1))
	require.Equal(t, lines(t, 1), readN(t, ss, len(lines(t, 1))))
	require.NoError(t, s.Close())
	_, err = readEnd(t, ss)
	require.ErrorIs(t, err, io.EOF)
	_ = ss.Close()
}

func testServerCloseEndsRead(t *testing.T, newEnv envFactory) {
	e := v2env(t, newEnv)
	s, ss := dial(t, e)
	serverWrite(t, ss, []byte("goaway"))
	require.NoError(t, ss.Close())
	// What was written before the close arrives, then EOF.
	got, err := readAll(t, s)
	require.Equal(t, io.EOF, err, "Read after the server's Close: %v", err)
	require.Equal(t, []byte("goaway"), got)
	require.NoError(t, s.Close())
}

func testServerResetEndsRead(t *testing.T, newEnv envFactory) {
	e := v2env(t, newEnv)
	s, ss := dial(t, e)
	serverWrite(t, ss, []byte("ack"))
	require.Equal(t, []byte("ack"), readFull(t, s, 3))

	read := result(func() error {
		_, err := s.Read(make([]byte, 8))
		return err
	})
	require.NoError(t, ss.Reset())
	err := await(t, "Read", read, func() { _ = s.Reset() })
	require.ErrorIs(t, err, transport.ErrReset)
	var se *network.StreamError
	require.ErrorAs(t, err, &se)
	require.True(t, se.Remote, "a reset by the server is remote: %v", err)
	_, err = s.Write(lines(t, 1))
	require.ErrorIs(t, err, transport.ErrReset)
	require.NoError(t, s.Reset())
}

// parkedRead starts a Read on s once a first byte went through, so that it
// is (most likely) parked with nothing to read, and returns its result.
func parkedRead(t *testing.T, s transport.Stream, ss serverStream) <-chan error {
	t.Helper()
	serverWrite(t, ss, []byte("w"))
	require.Equal(t, []byte("w"), readFull(t, s, 1))
	return result(func() error {
		n, err := s.Read(make([]byte, 8))
		if n != 0 {
			return fmt.Errorf("read %d bytes nobody wrote", n)
		}
		return err
	})
}

// testLocalResetUnblocksRead is the hung aggregator: it accepts and never
// writes, and the sender's ack timer resets the stream, which must end the
// parked Read at once.
func testLocalResetUnblocksRead(t *testing.T, newEnv envFactory) {
	e := v2env(t, newEnv)
	s, ss := dial(t, e)
	read := parkedRead(t, s, ss)
	require.NoError(t, s.Reset())
	err := await(t, "Read", read, func() {})
	require.ErrorIs(t, err, transport.ErrReset)
	var se *network.StreamError
	require.ErrorAs(t, err, &se)
	require.False(t, se.Remote, "a local reset is local: %v", err)

	// Later reads say the same, even once the server wrote.
	_, _ = ss.Write([]byte("late"))
	_, err = s.Read(make([]byte, 8))
	require.ErrorIs(t, err, transport.ErrReset)
	_, err = readEnd(t, ss)
	require.ErrorIs(t, err, transport.ErrReset)
	_ = ss.Reset()
}

func testLocalCloseUnblocksRead(t *testing.T, newEnv envFactory) {
	e := v2env(t, newEnv)
	s, ss := dial(t, e)
	read := parkedRead(t, s, ss)
	require.NoError(t, s.Close())
	err := await(t, "Read", read, func() { _ = s.Reset() })
	require.ErrorIs(t, err, net.ErrClosed)
	require.NotErrorIs(t, err, transport.ErrReset)
	require.NotErrorIs(t, err, io.EOF)

	_, err = s.Read(make([]byte, 8))
	require.ErrorIs(t, err, net.ErrClosed)
	// The server sees an orderly end.
	_, err = readEnd(t, ss)
	require.ErrorIs(t, err, io.EOF)
	_ = ss.Close()
}

// testReadAfterHalfClose is v2's clean stop: the sender writes its Bye and
// half-closes, then reads until the aggregator's own end.
func testReadAfterHalfClose(t *testing.T, newEnv envFactory) {
	e := v2env(t, newEnv)
	s, ss := dial(t, e)
	writeLines(t, s, lines(t, 1))
	require.NoError(t, s.CloseWrite())
	got, err := readEnd(t, ss)
	require.ErrorIs(t, err, io.EOF)
	require.Equal(t, lines(t, 1), got)

	serverWrite(t, ss, []byte("last ack"))
	require.NoError(t, ss.Close())
	back, err := readAll(t, s)
	require.Equal(t, io.EOF, err, "Read after a half-close then the server's Close: %v", err)
	require.Equal(t, []byte("last ack"), back)
	require.NoError(t, s.Close())
}

// testReadWriteConcurrently: the sender writes beats while it reads acks,
// and the server answers each beat as it reads it.
func testReadWriteConcurrently(t *testing.T, newEnv envFactory) {
	const beats = 200
	e := v2env(t, newEnv)
	s, ss := dial(t, e)
	line := lines(t, 1)
	ack := []byte("ack;")

	served := result(func() error {
		buf := make([]byte, len(line))
		for range beats {
			if _, err := io.ReadFull(ss, buf); err != nil {
				return err
			}
			if !bytes.Equal(buf, line) {
				return fmt.Errorf("server read %q", buf)
			}
			if _, err := ss.Write(ack); err != nil {
				return err
			}
		}
		return nil
	})
	acked := result(func() error {
		buf := make([]byte, len(ack))
		for i := range beats {
			if _, err := io.ReadFull(s, buf); err != nil {
				return fmt.Errorf("ack %d: %w", i, err)
			}
			if !bytes.Equal(buf, ack) {
				return fmt.Errorf("ack %d: read %q", i, buf)
			}
		}
		return nil
	})
	for range beats {
		writeLines(t, s, line)
	}
	require.NoError(t, await(t, "server", served, func() { _ = ss.Reset() }))
	require.NoError(t, await(t, "acks", acked, func() { _ = s.Reset() }))
	require.NoError(t, s.Close())
	_ = ss.Close()
}

// testWaitRemoteDiscards: a v1 caller watches the end with WaitRemote and
// never reads; whatever the receiver writes (far more than a window) is
// dropped, so it cannot wedge the receiver, and the end still arrives.
func testWaitRemoteDiscards(t *testing.T, newEnv envFactory) {
	e := v2env(t, newEnv)
	s, ss := dial(t, e)
	waited := result(s.WaitRemote)
	written := result(func() error {
		_, err := ss.Write(make([]byte, 4<<20))
		return err
	})
	require.NoError(t, await(t, "server Write", written, func() { _ = ss.Reset() }))
	require.NoError(t, ss.Close())
	require.Equal(t, io.EOF, await(t, "WaitRemote", waited, func() { _ = s.Reset() }))
	require.NoError(t, s.Close())
}
