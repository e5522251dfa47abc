package tracker_test

import (
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/wire"
)

// The stream handler's contract, in virtual time: open, beat, sweep, end.
func Example() {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tr, err := tracker.New(tracker.Config{ExpectedPeriod: 3 * time.Second, StartupGrace: -1}, start)
	if err != nil {
		panic(err)
	}
	show := func(ch tracker.Change) {
		fmt.Printf("%s %s -> %s at +%v\n", ch.Nickname, ch.From, ch.To, ch.At.Sub(start))
	}

	alice := peer.ID("alice's authenticated peer id")
	if err := tr.StreamOpened(alice, start); err != nil {
		panic(err) // tracker.ErrFull: refuse the stream
	}
	hb := wire.Heartbeat{Head: "{ bafy2bzaceabc }", Height: 444, Nickname: "alice"}
	// Alice beats every 3s: the tracker learns her period from the
	// intervals, so her thresholds are 2x and 5x 3s.
	for _, d := range []time.Duration{0, 3 * time.Second, 6 * time.Second} {
		if ch, changed, err := tr.Beat(alice, &hb, start.Add(d)); err == nil && changed {
			show(ch)
		}
	}
	n, _ := tr.Node(alice)
	fmt.Println("period", n.Period)
	// Silent for 6s: still Up (the thresholds are strict). 6s+1ns: Suspect.
	for _, d := range []time.Duration{12 * time.Second, 12*time.Second + 1, 22 * time.Second} {
		for _, ch := range tr.Sweep(start.Add(d), nil) {
			show(ch)
		}
	}
	if ch, changed, _ := tr.Beat(alice, &hb, start.Add(25*time.Second)); changed {
		show(ch)
	}
	if ch, changed := tr.StreamEnded(alice, true, start.Add(26*time.Second)); changed {
		show(ch) // a graceful EOF: left on purpose, no alert
	}
	s := tr.Summary()
	fmt.Println(s.Nodes, s.ByState[tracker.Left], s.InConsensus)
	// Output:
	// alice joining -> up at +0s
	// period 3s
	// alice up -> suspect at +12.000000001s
	// alice suspect -> down at +22s
	// alice down -> up at +25s
	// alice up -> left at +26s
	// 1 1 0
}
