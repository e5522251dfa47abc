package clockwork

import "github.com/benbjohnson/clock"

// RawTimer is benbjohnson/clock's relative timer, as Clock.Timer returns
// it. Code that only needs a timeout on a Clock (the memory transport) uses
// it through this alias, so that no package but clockwork imports
// benbjohnson/clock.
type RawTimer = clock.Timer
