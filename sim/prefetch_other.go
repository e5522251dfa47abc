//go:build !amd64 && !arm64

package sim

import "unsafe"

// prefetch is a no-op where the package has no prefetch instruction: the
// simulation is the same, only slower at many nodes.
func prefetch(unsafe.Pointer, int) {}
