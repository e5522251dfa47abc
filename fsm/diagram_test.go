package fsm

import (
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The DOT diagram has one edge per pair of states (so self-loops do not
// stack their labels on each other), every drawn row's event in a label,
// and a final state after Stopped.
func TestDOT(t *testing.T) {
	dot := DOT()
	edge := regexp.MustCompile(`(?m)^    (\w+) -> (\w+)(?: \[label="([^"]*)"\])?;$`)
	seen := map[string]bool{}
	events := map[string]int{}
	for _, m := range edge.FindAllStringSubmatch(dot, -1) {
		key := m[1] + "->" + m[2]
		require.False(t, seen[key], "two edges %s", key)
		seen[key] = true
		for _, l := range strings.Split(m[3], `\n`) {
			if l != "" {
				events[m[1]+" "+l]++
			}
		}
	}
	for _, tr := range Table() {
		if drawn(tr) {
			require.Equal(t, 1, events[tr.From.String()+" "+edgeLabel(tr)], "row %v is in exactly one label", tr)
		}
	}
	require.True(t, seen["Beating->Beating"])
	require.Contains(t, dot, `Beating -> Beating [label="BeatDue\nBeatDue (write busy)\nBeatDue (unproven)\nWriteSucceeded\nAckReceived (unproven)\nAckReceived\nWelcomeReceived"];`)
	require.True(t, seen["start->Disconnected"])
	require.True(t, seen["Stopped->end"], "the end state is marked")
	require.Contains(t, dot, "end [shape=doublecircle")
	require.Equal(t, 1, strings.Count(dot, "-> end;"), "only Stopped ends")
}
