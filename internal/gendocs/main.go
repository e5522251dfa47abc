// Command gendocs writes the generated documentation: by default
// docs/state-machine.md from fsm.Table, and with -nodes the aggregator's
// node-state page from the tracker's table. `go generate ./...` runs both
// (from heartbeat.go and aggregator/tracker/doc.go).
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/fsm"
)

func main() {
	nodes := flag.Bool("nodes", false, "write the aggregator's node states (tracker.Markdown) instead of the sender's state machine")
	flag.Parse()
	out, text := "docs/state-machine.md", fsm.Markdown
	if *nodes {
		out, text = "docs/node-states.md", tracker.Markdown
	}
	if flag.NArg() > 0 {
		out = flag.Arg(0)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "gendocs:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(out, []byte(text()), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "gendocs:", err)
		os.Exit(1)
	}
}
