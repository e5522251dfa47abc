//go:build unix

package loadgen

import (
	"fmt"
	"syscall"
)

// RaiseOpenFiles raises this process's open-files limit (RLIMIT_NOFILE)
// from its soft value to its hard value, as far as the kernel allows, and
// returns the soft limit now in force and the hard one. Go already does
// this at startup on Linux; calling it again makes the figure explicit and
// covers the platforms where it does not. Raising the hard limit itself
// needs privilege (ulimit -Hn, systemd LimitNOFILE).
func RaiseOpenFiles() (soft, hard uint64, err error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, 0, fmt.Errorf("getrlimit RLIMIT_NOFILE: %w", err)
	}
	if l.Cur < l.Max {
		want := l
		want.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			return uint64(l.Cur), uint64(l.Max), fmt.Errorf("setrlimit RLIMIT_NOFILE to %d: %w", l.Max, err)
		}
		l = want
	}
	return uint64(l.Cur), uint64(l.Max), nil
}
