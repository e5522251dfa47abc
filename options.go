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
	clock    clockwork.Clock
	logger   hclog.Logger
	name     string
	miner    func() string
	genesis  *cid.Cid
	dialer   transport.Dialer
	seedSet  bool
	observer func(Observation)
	// policy is the state machine's config but for BeatPeriod and
	// Backoff.Base, which come from the validated Config (machineConfig).
	policy fsm.Config
	// closeTimeout bounds the clean stop (WithCloseTimeout).
	closeTimeout time.Duration
}

func defaultOptions() options {
	return options{
		clock:        clockwork.Real(),
		name:         "primary",
		policy:       fsm.DefaultConfig(),
		closeTimeout: DefaultCloseTimeout,
	}
}

// DefaultCloseTimeout bounds how long Close (or the end of Run's context)
// waits for the aggregator to close the stream in turn; see WithCloseTimeout.
const DefaultCloseTimeout = time.Second

// Backoff shapes the wait between connection attempts beyond the
// ReconnectPeriod it starts from: it is fsm.BackoffPolicy, whose Base is the
// config's ReconnectPeriod, so WithBackoff requires Base to be 0. The default
// is no growth (every wait is ReconnectPeriod, as the config promises) with
// ±20% jitter (fsm.DefaultJitter), so a fleet that lost its aggregator at once
// does not retry in lockstep.
type Backoff = fsm.BackoffPolicy

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
	return func(o *options) error { o.policy.Seed, o.seedSet = seed, true; return nil }
}

// WithBackoff sets growth, cap and jitter of the reconnect wait. b.Base must
// be 0: the config's ReconnectPeriod is the base.
func WithBackoff(b Backoff) Option {
	return func(o *options) error {
		if b.Base != 0 {
			return fmt.Errorf("WithBackoff: Backoff.Base must be 0 (the config's reconnectPeriod sets it), got %s", b.Base)
		}
		o.policy.Backoff = b
		return nil
	}
}

// WithTimeouts bounds a dial and a heartbeat write (default
// fsm.DefaultDialTimeout and fsm.DefaultWriteTimeout, 10 s each), measured
// on the Service's clock by the state machine, which owns them. The libp2p
// transport also sets wall-clock deadlines on the stream, but only as a
// backstop, transport.BackstopFactor (2) times longer.
func WithTimeouts(dial, write time.Duration) Option {
	return func(o *options) error { o.policy.DialTimeout, o.policy.WriteTimeout = dial, write; return nil }
}

// WithCloseTimeout bounds the clean stop (default DefaultCloseTimeout, 1 s,
// on the Service's clock). Close and the end of Run's context half-close the
// stream (CloseWrite) and wait up to d for the aggregator to close its end
// in turn, so that it records an orderly end (the node Left) rather than a
// reset (the node Suspect, then Down), even if the caller closes its libp2p
// host right after Close returns. If the aggregator does not answer within
// d, the stream is reset. d must be positive.
func WithCloseTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("WithCloseTimeout: must be positive, got %s", d)
		}
		o.closeTimeout = d
		return nil
	}
}

// WithErrorEvery changes the legacy 10 minutes (fsm.DefaultErrorEvery) after
// which a continuing connection failure is logged at ERROR again.
func WithErrorEvery(d time.Duration) Option {
	return func(o *options) error { o.policy.ErrorEvery = d; return nil }
}

// WithObserver calls f after every event the Service handles, on the
// Service's goroutine, with what the state machine decided. f must return
// quickly and must not call back into the Service.
func WithObserver(f func(Observation)) Option {
	return func(o *options) error { o.observer = f; return nil }
}

// machineConfig is the fsm configuration these options and s describe.
func (o *options) machineConfig(s settings) fsm.Config {
	c := o.policy
	c.BeatPeriod = s.beatPeriod
	c.Backoff.Base = s.reconnectPeriod
	return c
}
