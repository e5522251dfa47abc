// Command barehost is a bare go-libp2p host with the aggregator's host
// options that reads heartbeat streams and discards them: the floor the
// capacity benchmark compares the aggregator with. Not a product feature.
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"

	"github.com/p2pbeat/heartbeat/aggregator"
	"github.com/p2pbeat/heartbeat/wire"
)

func main() {
	cfg := aggregator.Config{MaxNodes: 60000}
	h, err := aggregator.NewHost(cfg, nil, nil, libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"))
	if err != nil {
		panic(err)
	}
	var lines, streams atomic.Int64
	h.SetStreamHandler(wire.ProtocolID, func(s network.Stream) {
		streams.Add(1)
		defer streams.Add(-1)
		// As the aggregator does: a peer with a stream keeps its connection.
		id := s.Conn().RemotePeer()
		h.ConnManager().Protect(id, "bare")
		defer h.ConnManager().Unprotect(id, "bare")
		_ = s.Scope().SetService(wire.ServiceName)
		r := bufio.NewReaderSize(s, 512)
		for {
			_, err := r.ReadSlice('\n')
			if err == bufio.ErrBufferFull {
				continue
			}
			if err != nil {
				if err == io.EOF {
					s.Close()
				} else {
					s.Reset()
				}
				return
			}
			lines.Add(1)
		}
	})
	for _, a := range h.Addrs() {
		fmt.Printf("bare %s/p2p/%s\n", a, h.ID())
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	t := time.NewTicker(time.Second)
	for {
		select {
		case <-sig:
			h.Close()
			return
		case <-t.C:
			fmt.Printf("lines=%d streams=%d\n", lines.Load(), streams.Load())
		}
	}
}
