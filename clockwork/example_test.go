package clockwork_test

import (
	"fmt"
	"time"

	"github.com/p2pbeat/heartbeat/clockwork"
)

// An owner that beats every second at absolute deadlines, driven by a test.
// The owner calls Ack after fully handling each value (here: after
// re-arming), so when AdvanceToNext returns the next deadline is already
// armed and the test needs no other synchronisation.
func ExampleAdvanceToNext() {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	m := clockwork.NewMock(start)

	tm := clockwork.NewTimer(m) // created by the owner's constructor
	beats := make(chan time.Time, 8)
	quit := make(chan struct{})
	done := make(chan struct{})
	tm.ResetAt(start.Add(time.Second))
	go func() { // the owner: one goroutine, one select
		defer close(done)
		defer tm.Close()
		for {
			select {
			case now := <-tm.C():
				beats <- now
				tm.ResetAt(now.Add(time.Second)) // absolute: no drift
				tm.Ack()                         // handled: the test may move on
			case <-quit:
				return
			}
		}
	}()

	for range 3 {
		now, _ := clockwork.AdvanceToNext(m)
		fmt.Println(now.Format(time.TimeOnly), (<-beats).Format(time.TimeOnly))
	}
	next, _ := clockwork.NextDeadline(m)
	fmt.Println("next", next.Format(time.TimeOnly))

	close(quit)
	<-done
	// Output:
	// 00:00:01 00:00:01
	// 00:00:02 00:00:02
	// 00:00:03 00:00:03
	// next 00:00:04
}
