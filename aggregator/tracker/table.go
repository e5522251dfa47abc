package tracker

import "fmt"

// Event is what can move a node from one State to another.
type Event uint8

// The events. Beat, StreamEnded, Sweep, Forget and admission (eviction)
// classify what they see into one Event and look the (state, event) pair up
// in the transition table.
const (
	// Heartbeat: a heartbeat arrived (Beat).
	Heartbeat Event = iota
	// Silence: Sweep found the node silent past its Suspect threshold.
	Silence
	// LongSilence: Sweep found the node silent past its Down threshold
	// while the tracker is not disrupted.
	LongSilence
	// StreamEOF: the node's last open stream ended with a clean EOF.
	StreamEOF
	// StreamLost: the node's last open stream ended any other way (reset,
	// error, idle timeout).
	StreamLost
	// Evicted: a new peer took the node's slot in a full tracker.
	Evicted
	// Forgotten: the operator called Forget.
	Forgotten

	numEvents
)

var eventNames = [numEvents]string{"heartbeat", "silence", "long silence", "stream eof", "stream lost", "evicted", "forgotten"}

// String returns the event's name as the generated docs show it.
func (e Event) String() string {
	if e < numEvents {
		return eventNames[e]
	}
	return fmt.Sprintf("event(%d)", uint8(e))
}

// Gone is the To of a transition that drops the node's record. It is not
// a state a node is ever in; the diagrams draw it as the end state.
const Gone State = 255

// Transition is one row of the node state table.
type Transition struct {
	From State
	On   Event
	To   State
	// Why says why the row exists, for the generated docs.
	Why string
}

// table is the node lifecycle: the single source for the runtime (step),
// the tests and docs/node-states.md. A (state, event) pair with no row
// changes nothing.
var table = [...]Transition{
	{Joining, Heartbeat, Up, "the first heartbeat makes a node"},
	{Joining, StreamEOF, Gone, "its last stream ended before any heartbeat: it never was a node"},
	{Joining, StreamLost, Gone, "its last stream ended before any heartbeat: it never was a node"},
	{Up, Silence, Suspect, "silent past SuspectAfter scaled to its own period, and past its reconnect allowance after a lost stream"},
	{Up, LongSilence, Down, "silent past DownAfter scaled to its own period, seen by one sweep; never while disrupted"},
	{Up, StreamEOF, Left, "it said goodbye: not an alert"},
	{Up, StreamLost, Up, "a lost stream is not proof of death: a reconnect allowance starts, silence decides"},
	{Suspect, Heartbeat, Up, "it beat again"},
	{Suspect, LongSilence, Down, "silent past its Down threshold; never while disrupted"},
	{Suspect, StreamEOF, Left, "it said goodbye"},
	{Suspect, StreamLost, Suspect, "the reconnect allowance also delays its Down deadline"},
	{Down, Heartbeat, Up, "it came back"},
	{Down, StreamEOF, Left, "it said goodbye"},
	{Down, Evicted, Gone, "the tracker is full and it has been Down the longest, longer than DownRetention"},
	{Left, Heartbeat, Up, "it came back"},
	{Left, Evicted, Gone, "the tracker is full: the Left node that left first makes room"},
	{Joining, Forgotten, Gone, "Forget"},
	{Up, Forgotten, Gone, "Forget"},
	{Suspect, Forgotten, Gone, "Forget"},
	{Down, Forgotten, Gone, "Forget"},
	{Left, Forgotten, Gone, "Forget"},
}

// Table returns a copy of the node state table, in order.
func Table() []Transition { return append([]Transition(nil), table[:]...) }

// steps indexes table by (from, event); invalid marks a pair with no row.
var steps = func() (s [numStates][numEvents]State) {
	for i := range s {
		for j := range s[i] {
			s[i][j] = invalid
		}
	}
	for _, t := range table {
		if s[t.From][t.On] != invalid {
			panic(fmt.Sprintf("tracker: two rows for (%v, %v)", t.From, t.On))
		}
		s[t.From][t.On] = t.To
	}
	return s
}()

// invalid marks a (state, event) pair with no row in steps.
const invalid State = 254

// step returns the state the table gives for (from, on), and false when no
// row matches: the event changes nothing.
func step(from State, on Event) (State, bool) {
	if from >= numStates || on >= numEvents {
		return from, false
	}
	to := steps[from][on]
	return to, to != invalid
}
