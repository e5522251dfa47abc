package aggregator

import (
	"errors"
	"syscall"
	"testing"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"
)

// A second aggregator (another key) on the port of a running one fails
// with "address already in use", matching syscall.EADDRINUSE, instead of
// sharing the port through SO_REUSEPORT.
func TestSecondAggregatorOnSamePortFails(t *testing.T) {
	checkLeaks(t)
	for _, listen := range []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"} {
		t.Run(listen, func(t *testing.T) {
			first, err := NewHost(Config{}, nil, nil, libp2p.ListenAddrStrings(listen))
			require.NoError(t, err)
			defer first.Close()
			require.Len(t, first.Addrs(), 1)
			taken := first.Addrs()[0]

			key, _, err := crypto.GenerateEd25519Key(nil)
			require.NoError(t, err)
			second, err := NewHost(Config{}, nil, nil, libp2p.Identity(key), libp2p.ListenAddrs(taken))
			if second != nil {
				second.Close()
			}
			require.Error(t, err)
			require.True(t, errors.Is(err, syscall.EADDRINUSE), "errors.Is(EADDRINUSE): %v", err)
			require.ErrorContains(t, err, "address already in use")
			require.ErrorContains(t, err, taken.String())

		})
	}
}

// NewHost listens on every address it is given and still accepts senders.
func TestNewHostListens(t *testing.T) {
	checkLeaks(t)
	h, err := NewHost(Config{}, nil, nil, libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"))
	require.NoError(t, err)
	defer h.Close()
	var tcp, quic bool
	for _, a := range h.Addrs() {
		if _, err := a.ValueForProtocol(ma.P_TCP); err == nil {
			tcp = true
		}
		if _, err := a.ValueForProtocol(ma.P_QUIC_V1); err == nil {
			quic = true
		}
	}
	require.True(t, tcp && quic, "addrs %v", h.Addrs())
	_, err = NewHost(Config{MaxNodes: -1}, nil, nil)
	require.ErrorContains(t, err, "Config.MaxNodes")
	_, err = NewHost(Config{}, nil, nil, libp2p.ListenAddrStrings("/ip4/127.0.0.1/udp/0"))
	require.Error(t, err)
	require.False(t, errors.Is(err, syscall.EADDRINUSE))
}
