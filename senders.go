package heartbeat

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
)

// AlertsEnv names the environment variable with the alert targets: a
// comma-separated list of aggregator multiaddrs, as the legacy node read it.
const AlertsEnv = "FIL_HEARTBEAT_ALERTS"

// AlertPeriod is both the BeatPeriod and the ReconnectPeriod of an alert
// sender, as in the legacy node.
const AlertPeriod = 10 * time.Second

// Senders are the heartbeat services of one node: the primary sender and
// the alert senders. Close stops them all.
type Senders struct {
	services []*Service
}

// Services lists the running senders, the primary first.
func (s *Senders) Services() []*Service { return append([]*Service(nil), s.services...) }

// Close stops every sender and waits for them, in parallel: each ends its
// stream in order and waits up to its close timeout (WithCloseTimeout) for
// the aggregator's end, so Close returns within one timeout, not one per
// sender. Close the Senders before the libp2p host, even after cancelling
// the context they run in: an end still queued in the host is lost with it.
func (s *Senders) Close() error {
	errs := make([]error, len(s.services))
	var wg sync.WaitGroup
	for i, svc := range s.services {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = svc.Close()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// StartNodeSenders does what the legacy node's setupHeartbeatServices did:
// it starts the primary sender when cfg.BeatTarget is set, and one alert
// sender per target in the FIL_HEARTBEAT_ALERTS environment variable
// (comma-separated), each beating and reconnecting every 10 s with the same
// nickname. Empty targets start nothing. If any sender cannot be created,
// none is left running and the error names the target.
func StartNodeSenders(ctx context.Context, h host.Host, cfg Config, head HeadFunc, opts ...Option) (*Senders, error) {
	return StartSenders(ctx, h, cfg, os.Getenv(AlertsEnv), head, opts...)
}

// logger is the logger New would give a Service with opts.
func logger(opts []Option) hclog.Logger {
	o := defaultOptions()
	for _, opt := range opts {
		_ = opt(&o) // an invalid option fails New later, naming itself
	}
	if o.logger == nil {
		return hclog.New(&hclog.LoggerOptions{Name: "heartbeat", Level: hclog.Info, TimeFn: o.clock.Now})
	}
	return o.logger.Named("heartbeat")
}

// StartSenders is StartNodeSenders with the alert targets given as a
// comma-separated list instead of read from the environment.
func StartSenders(ctx context.Context, h host.Host, cfg Config, alerts string, head HeadFunc, opts ...Option) (*Senders, error) {
	type plan struct {
		name string
		cfg  Config
	}
	var plans []plan
	if strings.TrimSpace(cfg.BeatTarget) != "" {
		plans = append(plans, plan{"primary", cfg})
	}
	n := 0
	for _, target := range strings.Split(alerts, ",") {
		if target = strings.TrimSpace(target); target == "" {
			continue
		}
		n++
		plans = append(plans, plan{fmt.Sprintf("alert-%d", n), Config{
			BeatTarget:      target,
			BeatPeriod:      AlertPeriod.String(),
			ReconnectPeriod: AlertPeriod.String(),
			Nickname:        cfg.Nickname,
		}})
	}
	// Two senders from one host to one aggregator are one peer to it: their
	// streams would supersede each other for ever. Keep the first (the
	// primary, with the shorter period) of each peer id. Targets that do
	// not parse are kept, for New to reject naming the field.
	seen := make(map[peer.ID]string, len(plans))
	kept := plans[:0:0]
	for _, p := range plans {
		if info, err := ParseTarget(p.cfg.BeatTarget); err == nil {
			if first, dup := seen[info.ID]; dup {
				logger(opts).Info("sender not started: its target is the same aggregator (peer id) as another sender's",
					"sender", p.name, "target", info.ID.String(), "same_as", first)
				continue
			}
			seen[info.ID] = p.name
		}
		kept = append(kept, p)
	}
	plans = kept
	s := &Senders{}
	for _, p := range plans {
		svc, err := New(h, p.cfg, head, append(append([]Option(nil), opts...), WithName(p.name))...)
		if err != nil {
			_ = s.Close()
			return nil, fmt.Errorf("heartbeat: %s sender: %w", p.name, err)
		}
		s.services = append(s.services, svc)
	}
	for _, svc := range s.services {
		if err := svc.Start(ctx); err != nil {
			_ = s.Close()
			return nil, err
		}
	}
	return s, nil
}
