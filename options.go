package heartbeat

import (
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/ipfs/go-cid"

	"github.com/p2pbeat/heartbeat/clockwork"
	"github.com/p2pbeat/heartbeat/fsm"
	"github.com/p2pbeat/heartbeat/transport"
)

// Option configures a Service.
type Option func(*options) error

type options struct {
	clock        clockwork.Clock
	logger       hclog.Logger
	name         string
	miner        func() string
	genesis      *cid.Cid
	dialer       transport.Dialer
	seed         uint64
	seedSet      bool
	backoff      Backoff
	dialTimeout  time.Duration
	writeTimeout time.Duration
	errorEvery   time.Duration
	observer     func(Observation)
}

func defaultOptions() options {
	return options{
		clock:        clockwork.Real(),
		name:         "primary",
		backoff:      Backoff{Jitter: 0.2},
		dialTimeout:  10 * time.Second,
		writeTimeout: 10 * time.Second,
		errorEvery:   10 * time.Minute,
	}
}

// Backoff shapes the wait between connection attempts beyond the
// ReconnectPeriod it starts from. The default is no growth (every wait is
// ReconnectPeriod, as the config promises) with ±20% jitter, so a fleet that
// lost its aggregator at once does not retry in lockstep.
type Backoff struct {
	// Growth multiplies the wait after each further failure; 0 or 1 is none.
	Growth float64
	// Max caps the wait; 0 means no cap.
	Max time.Duration
	// Jitter is the relative spread in [0, 1); 0 disables it.
	Jitter float64
}

// WithClock sets the clock the Service runs on (default: the wall clock).
// Tests pass clockwork.NewMock(...) and step it with clockwork.AdvanceToNext.
func WithClock(c clockwork.Clock) Option {
	return func(o *options) error {
		if c == nil {
			return fmt.Errorf("WithClock: nil clock")
		}
		o.clock = c
		return nil
	}
}

// WithLogger sets the logger. The Service names it "heartbeat.<name>" and
// adds the target's peer id; keys are snake_case and errors go under "error".
func WithLogger(l hclog.Logger) Option {
	return func(o *options) error {
		if l == nil {
			return fmt.Errorf("WithLogger: nil logger")
		}
		o.logger = l
		return nil
	}
}

// WithName names the sender in logs and status (default "primary").
func WithName(name string) Option {
	return func(o *options) error { o.name = name; return nil }
}

// WithMinerAddress sets a getter for the node's miner address, called once
// per heartbeat; it must be quick. Without it, MinerAddress is "".
func WithMinerAddress(f func() string) Option {
	return func(o *options) error { o.miner = f; return nil }
}

// WithGenesisCID adds the GenesisCID field that later senders appended.
// Without it the line is exactly the 2019 format.
func WithGenesisCID(c cid.Cid) Option {
	return func(o *options) error { o.genesis = genesisOf(c); return nil }
}

// WithTransport replaces the libp2p transport, for tests (transport.Network)
// or a custom stack. With it, New accepts a nil host.
func WithTransport(d transport.Dialer) Option {
	return func(o *options) error {
		if d == nil {
			return fmt.Errorf("WithTransport: nil dialer")
		}
		o.dialer = d
		return nil
	}
}

// WithSeed seeds the reconnect jitter; the same seed gives the same delays.
// By default the seed is random.
func WithSeed(seed uint64) Option {
	return func(o *options) error { o.seed, o.seedSet = seed, true; return nil }
}

// WithBackoff sets growth, cap and jitter of the reconnect wait.
func WithBackoff(b Backoff) Option {
	return func(o *options) error { o.backoff = b; return nil }
}

// WithTimeouts bounds a dial and a heartbeat write (default 10 s each),
// measured on the Service's clock; the libp2p transport also sets wall-clock
// deadlines of the same length on the stream.
func WithTimeouts(dial, write time.Duration) Option {
	return func(o *options) error { o.dialTimeout, o.writeTimeout = dial, write; return nil }
}

// WithErrorEvery changes the legacy 10 minutes after which a continuing
// connection failure is logged at ERROR again.
func WithErrorEvery(d time.Duration) Option {
	return func(o *options) error { o.errorEvery = d; return nil }
}

// WithObserver calls f after every event the Service handles, on the
// Service's goroutine, with what the state machine decided. f must return
// quickly and must not call back into the Service.
func WithObserver(f func(Observation)) Option {
	return func(o *options) error { o.observer = f; return nil }
}

// machineConfig is the fsm configuration these options and s describe.
func (o *options) machineConfig(s settings) fsm.Config {
	return fsm.Config{
		BeatPeriod:   s.beatPeriod,
		DialTimeout:  o.dialTimeout,
		WriteTimeout: o.writeTimeout,
		ErrorEvery:   o.errorEvery,
		Backoff: fsm.BackoffPolicy{
			Base:   s.reconnectPeriod,
			Growth: o.backoff.Growth,
			Max:    o.backoff.Max,
			Jitter: o.backoff.Jitter,
		},
		Seed: o.seed,
	}
}
