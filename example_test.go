package heartbeat_test

import (
	"bufio"
	"context"
	"fmt"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/p2pbeat/heartbeat"
)

// A node embeds a sender: it names the aggregator by its /p2p/ multiaddr,
// says how to read its chain head, and runs the Service until it shuts down.
func Example() {
	// An aggregator to report to (in production: `heartbeat aggregate`).
	agg, _ := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	defer agg.Close()
	lines := make(chan string, 1)
	agg.SetStreamHandler(protocol.ID(heartbeat.ProtocolID), func(s network.Stream) {
		line, _ := bufio.NewReader(s).ReadString('\n')
		lines <- line
		_ = s.Reset()
	})

	// The node: its own libp2p host, its config section, its chain.
	node, _ := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	defer node.Close()
	cfg := heartbeat.DefaultConfig()
	cfg.BeatTarget = agg.Addrs()[0].String() + "/p2p/" + agg.ID().String()
	cfg.Nickname = "BobHoblaw"
	head := func() (heartbeat.ChainHead, error) {
		return heartbeat.ChainHead{Head: "{ bafy2bzaceabc }", Height: 444}, nil
	}
	svc, err := heartbeat.New(node, cfg, head, heartbeat.WithMinerAddress(func() string { return "t01234" }))
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := svc.Start(context.Background()); err != nil {
		fmt.Println(err)
		return
	}
	defer svc.Close()

	fmt.Print(<-lines)
	// Output:
	// {"Head":"{ bafy2bzaceabc }","Height":444,"Nickname":"BobHoblaw","MinerAddress":"t01234"}
}
