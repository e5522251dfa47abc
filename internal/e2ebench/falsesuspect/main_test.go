package main

import (
	"bytes"
	"io"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// testdata/trace.txt and agg.log hold one case per peer (see the
// peer ids): PA on pace all
// along, PB written late by the generator, PC lost and not yet back, PD
// back before its last beat, PE late long before its silence; PC's
// Unknown -> Down comes after its stream was open again. want.txt is the
// report.
func TestReport(t *testing.T) {
	tl := timelines{}
	require.NoError(t, readFile("testdata/trace.txt", tl.read))
	var changes []change
	require.NoError(t, readFile("testdata/agg.log", func(r io.Reader) error {
		var err error
		changes, err = readChanges(r)
		return err
	}))
	var r report
	for _, c := range changes {
		r.add(c, tl.classify(c, 3*time.Second))
	}
	var out bytes.Buffer
	r.print(&out, 5)
	want, err := os.ReadFile("testdata/want.txt")
	require.NoError(t, err)
	require.Equal(t, string(want), out.String())
}
