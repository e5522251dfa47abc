//go:build !unix

package loadgen

import "errors"

// RaiseOpenFiles is not supported here: there is no RLIMIT_NOFILE.
func RaiseOpenFiles() (soft, hard uint64, err error) {
	return 0, 0, errors.New("no open-files limit on this platform")
}
