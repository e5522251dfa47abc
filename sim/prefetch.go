//go:build amd64 || arm64

package sim

import "unsafe"

// prefetch asks the CPU to start loading the lines cache lines from p on and
// returns at once. A plain load of the same memory (what touch did first, in
// pure Go) also starts the miss, but the CPU cannot retire past it until it
// lands, so a stream of them stalls the work they were meant to overlap.
//
//go:noescape
func prefetch(p unsafe.Pointer, lines int)
