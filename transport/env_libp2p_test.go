package transport_test

import (
	"crypto/rand"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/transport"
	"github.com/p2pbeat/heartbeat/wire"
)

// loopback is where every test host listens.
const loopback = "/ip4/127.0.0.1/tcp/0"

// newHost starts a libp2p host listening on addr (a fresh key when key is
// nil) and closes it when the test ends.
func newHost(t *testing.T, key crypto.PrivKey, addr string) host.Host {
	t.Helper()
	opts := []libp2p.Option{libp2p.ListenAddrStrings(addr)}
	if key != nil {
		opts = append(opts, libp2p.Identity(key))
	}
	h, err := libp2p.New(opts...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// aggregator is a libp2p host that hands the heartbeat streams it receives
// to the test.
type aggregator struct {
	h       host.Host
	streams chan network.Stream
}

// newAggregator starts an aggregator host listening on addr for protos
// (none given: v1 only, as a legacy aggregator). Streams the test never
// accepts are reset when it ends.
func newAggregator(t *testing.T, key crypto.PrivKey, addr string, protos ...protocol.ID) *aggregator {
	t.Helper()
	a := &aggregator{h: newHost(t, key, addr), streams: make(chan network.Stream, 16)}
	if len(protos) == 0 {
		protos = []protocol.ID{wire.ProtocolID}
	}
	for _, id := range protos {
		a.h.SetStreamHandler(id, func(s network.Stream) {
			select {
			case a.streams <- s:
			default:
				_ = s.Reset()
			}
		})
	}
	t.Cleanup(func() {
		for {
			select {
			case s := <-a.streams:
				_ = s.Reset()
			default:
				return
			}
		}
	})
	return a
}

func (a *aggregator) addrInfo() peer.AddrInfo {
	return peer.AddrInfo{ID: a.h.ID(), Addrs: a.h.Addrs()}
}

// accept returns the next stream the aggregator received.
func (a *aggregator) accept(t *testing.T) network.Stream {
	t.Helper()
	timer := time.NewTimer(patience)
	defer timer.Stop()
	select {
	case s := <-a.streams:
		return s
	case <-timer.C:
		t.Fatalf("no heartbeat stream within %s", patience)
		return nil
	}
}

type libp2pEnv struct {
	sender host.Host
	agg    *aggregator
	target peer.AddrInfo
	dialer transport.Dialer
}

func newLibp2pEnv(t *testing.T, writeTimeout time.Duration, opts ...envOption) env {
	cfg := newEnvConfig(opts)
	e := &libp2pEnv{
		sender: newHost(t, nil, loopback),
		agg:    newAggregator(t, nil, loopback, cfg.listen...),
	}
	e.target = e.agg.addrInfo()
	var dopts []transport.Libp2pOption
	if writeTimeout > 0 {
		dopts = append(dopts, transport.WithWriteTimeout(writeTimeout))
	}
	if cfg.dial != nil {
		dopts = append(dopts, transport.WithProtocols(cfg.dial...))
	}
	e.dialer = newLibp2pDialer(t, e.sender, dopts...)
	return e
}

// newLibp2pDialer returns NewLibp2p's Dialer, failing the test on an error.
func newLibp2pDialer(t *testing.T, h host.Host, opts ...transport.Libp2pOption) transport.Dialer {
	t.Helper()
	d, err := transport.NewLibp2p(h, opts...)
	require.NoError(t, err)
	return d
}

func (e *libp2pEnv) Dialer() transport.Dialer { return e.dialer }

func (e *libp2pEnv) Target() peer.AddrInfo { return e.target }

func (e *libp2pEnv) Accept(t *testing.T) serverStream { return e.agg.accept(t) }

func (e *libp2pEnv) StopListening(t *testing.T) { require.NoError(t, e.agg.h.Close()) }

// Unreachable is a fresh peer id at a loopback port nobody listens on: the
// connection is refused at once.
func (e *libp2pEnv) Unreachable(t *testing.T) peer.AddrInfo {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	return peer.AddrInfo{ID: randomID(t), Addrs: []ma.Multiaddr{tcpAddr(t, port)}}
}

// Hanging is a raw TCP listener that accepts connections and never says a
// word, so a dial hangs in the security handshake.
func (e *libp2pEnv) Hanging(t *testing.T) (peer.AddrInfo, func(t *testing.T)) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	accepted := make(chan struct{}, 1)
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			select {
			case accepted <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	target := peer.AddrInfo{ID: randomID(t), Addrs: []ma.Multiaddr{tcpAddr(t, l.Addr().(*net.TCPAddr).Port)}}
	return target, func(t *testing.T) {
		t.Helper()
		timer := time.NewTimer(patience)
		defer timer.Stop()
		select {
		case <-accepted:
		case <-timer.C:
			t.Fatalf("no dial reached the hanging target within %s", patience)
		}
	}
}

func randomID(t *testing.T) peer.ID {
	t.Helper()
	_, pub, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	id, err := peer.IDFromPublicKey(pub)
	require.NoError(t, err)
	return id
}

func tcpAddr(t *testing.T, port int) ma.Multiaddr {
	t.Helper()
	a, err := ma.NewMultiaddr("/ip4/127.0.0.1/tcp/" + strconv.Itoa(port))
	require.NoError(t, err)
	return a
}
