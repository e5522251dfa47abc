package zz

import (
	"os"
	"testing"
	"time"

	"github.com/p2pbeat/heartbeat/sim"
)

func TestR(t *testing.T) {
	d, _ := time.ParseDuration(os.Getenv("D"))
	rep, err := sim.Run(sim.Params{Nodes: 1000, Duration: d, Seed: 1, Scenario: os.Getenv("SC")})
	if rep != nil { rep.WriteText(os.Stdout) }
	if err != nil { t.Fatal(err) }
}
