//go:build race

package api

// raceEnabled: the race detector's shadow memory and per-goroutine state
// dwarf what is measured in RSS tests, which then re-run without it.
const raceEnabled = true
