package heartbeat

// Pending is the number of dials and writes in flight whose result the
// Service has not handled yet. The harness uses it as a sync point together
// with transport.Network.Blocked; it is a test-only hook, not public API.
func (s *Service) Pending() int { return int(s.pending.Load()) }
