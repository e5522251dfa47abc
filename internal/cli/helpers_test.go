package cli

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is an output stream a command writes to while the test reads.
type syncBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{} // closed and replaced at every write
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor waits, without sleeping, until the output holds a line containing
// want, and returns that line.
func (s *syncBuffer) waitFor(t *testing.T, want string) string {
	t.Helper()
	guard := time.NewTimer(time.Minute) // a bound on a broken run, never slept on
	defer guard.Stop()
	for {
		s.mu.Lock()
		text := s.b.String()
		if i := strings.Index(text, want); i >= 0 {
			s.mu.Unlock()
			start := strings.LastIndexByte(text[:i+1], '\n') + 1
			if want[0] == '\n' {
				start = i + 1
			}
			end := strings.IndexByte(text[start:], '\n')
			if end >= 0 {
				return text[start : start+end]
			}
			s.mu.Lock()
		}
		if s.changed == nil {
			s.changed = make(chan struct{})
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-guard.C:
			t.Fatalf("no %q in:\n%s", want, s.String())
		}
	}
}
