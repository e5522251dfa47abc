package sim

import (
	"fmt"
	"time"
)

// Run simulates p and returns its report. Invalid Params give an error that
// names the field, and no report. An invariant violation ends the run early
// and returns the report so far together with an *InvariantError (see
// errors.As) whose message carries the seed, the scenario and the command
// that replays the run. Run starts no goroutine and reads the wall clock
// only to measure Report.Wall.
func Run(p Params) (*Report, error) {
	c, err := p.resolve()
	if err != nil {
		return nil, err
	}
	s, err := newSim(c)
	if err != nil {
		return nil, err
	}
	began := time.Now()
	s.loop()
	rep := s.report(time.Since(began))
	if err := s.tr.finish(); err != nil && s.err == nil {
		return rep, fmt.Errorf("sim: writing the trace: %w", err)
	}
	if c.CSV != nil {
		if err := rep.WriteCSV(c.CSV); err != nil && s.err == nil {
			return rep, fmt.Errorf("sim: writing the CSV: %w", err)
		}
	}
	if s.err != nil {
		return rep, s.err
	}
	return rep, nil
}
