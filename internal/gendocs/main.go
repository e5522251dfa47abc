// Command gendocs writes the generated documentation: docs/state-machine.md
// from fsm.Table. Run it with `go generate ./...` from the module root.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/p2pbeat/heartbeat/fsm"
)

func main() {
	out := "docs/state-machine.md"
	if len(os.Args) > 1 {
		out = os.Args[1]
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "gendocs:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(out, []byte(fsm.Markdown()), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "gendocs:", err)
		os.Exit(1)
	}
}
