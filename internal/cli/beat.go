package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"

	"github.com/p2pbeat/heartbeat"
	"github.com/p2pbeat/heartbeat/internal/keyfile"
)

func runBeat(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	fs := newFlagSet("beat", "--target MULTIADDR [--nickname N] [--beat-period D] [--reconnect-period D] [--protocol auto|v1|v2] [--key FILE] [--log-level L] [--log-json]")
	target := fs.String("target", "", "aggregator multiaddr ending in /p2p/<peer-id> (required)")
	nickname := fs.String("nickname", "", "the node's nickname in the aggregator's views")
	beatPeriod := fs.Duration("beat-period", heartbeat.DefaultBeatPeriod, "time between heartbeats")
	reconnectPeriod := fs.Duration("reconnect-period", heartbeat.DefaultReconnectPeriod, "time between connection attempts (±20% jitter)")
	proto := fs.String("protocol", heartbeat.ProtocolAuto,
		"protocols to offer: auto (v2, then v1: the aggregator picks), v1 (the 2019 lines) or v2 (acknowledged beats; a v1-only aggregator refuses it)")
	keyPath := fs.String("key", "", "private key file: keeps the peer id across restarts (created 0600 if missing)")
	var lf logFlags
	lf.register(fs, "info")
	if err := parse(fs, args, stdout); err != nil {
		return err
	}
	if *target == "" {
		return usageError("--target is required")
	}
	if info, err := heartbeat.ParseTarget(*target); err == nil && len(info.Addrs) == 0 {
		// The library takes a bare /p2p/ target (an embedder's host may find
		// the addresses); this host has no routing, so it would retry forever.
		return usageError("--target %q: want an address before /p2p/, such as /ip4/192.0.2.1/tcp/4001/p2p/<peer-id>", *target)
	}
	for _, perr := range []error{positive("beat-period", *beatPeriod), positive("reconnect-period", *reconnectPeriod)} {
		if perr != nil {
			return perr
		}
	}
	log, err := lf.logger("beat", stderr)
	if err != nil {
		return err
	}
	defer func() { err = lf.failed(log, "sender", err) }()
	cfg := heartbeat.Config{BeatTarget: *target, BeatPeriod: beatPeriod.String(), ReconnectPeriod: reconnectPeriod.String(), Nickname: *nickname, Protocol: *proto}

	opts := []libp2p.Option{libp2p.NoListenAddrs}
	if *keyPath != "" {
		key, err := keyfile.LoadOrCreate(*keyPath)
		if err != nil {
			return err
		}
		opts = append(opts, libp2p.Identity(key))
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		return fmt.Errorf("libp2p host: %w", err)
	}
	defer h.Close()

	chain := syntheticChain{genesis: mainnetGenesis, period: 30 * time.Second, now: time.Now}
	svc, err := newSender(h, cfg, chain, log)
	if err != nil {
		return usageError("%s", flagError(err))
	}
	fmt.Fprintf(stdout, "peer id %s, beating to %s\n", h.ID(), *target)
	if err := svc.Run(ctx); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// newSender builds the Service of a beat process. The Service logs its
// state changes itself (at DEBUG), so the command adds no line of its own.
func newSender(h host.Host, cfg heartbeat.Config, chain syntheticChain, log hclog.Logger, opts ...heartbeat.Option) (*heartbeat.Service, error) {
	return heartbeat.New(h, cfg, chain.head, append([]heartbeat.Option{heartbeat.WithLogger(log)}, opts...)...)
}

// configFlags names the beat flag that sets each heartbeat.Config field.
var configFlags = map[string]string{
	"beatTarget": "target", "nickname": "nickname",
	"beatPeriod": "beat-period", "reconnectPeriod": "reconnect-period",
	"protocol": "protocol",
}

// flagError says a Config error in terms of the flag the user gave.
func flagError(err error) string {
	var ce *heartbeat.ConfigError
	if errors.As(err, &ce) {
		if flag, ok := configFlags[ce.Field]; ok {
			return "--" + flag + " " + strings.TrimPrefix(ce.Error(), "heartbeat: config "+ce.Field+" ")
		}
	}
	return err.Error()
}
