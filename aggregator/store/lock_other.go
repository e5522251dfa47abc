//go:build !unix

package store

import "os"

// lockDir is a no-op where flock(2) is not available: the data directory
// is not protected against a second process.
func lockDir(string) (*os.File, error) { return nil, nil }
