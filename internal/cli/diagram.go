package cli

import (
	"context"
	"io"

	"github.com/p2pbeat/heartbeat/fsm"
)

func runDiagram(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("diagram", "[--format mermaid|dot]")
	format := fs.String("format", "mermaid", "mermaid or dot")
	if err := parse(fs, args, stdout); err != nil {
		return err
	}
	switch *format {
	case "mermaid":
		_, err := io.WriteString(stdout, fsm.Mermaid())
		return err
	case "dot":
		_, err := io.WriteString(stdout, fsm.DOT())
		return err
	}
	return usageError("--format %q: want mermaid or dot", *format)
}
