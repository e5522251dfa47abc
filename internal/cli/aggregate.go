package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/p2pbeat/heartbeat"
	"github.com/p2pbeat/heartbeat/aggregator"
	"github.com/p2pbeat/heartbeat/aggregator/api"
	"github.com/p2pbeat/heartbeat/aggregator/store"
	"github.com/p2pbeat/heartbeat/internal/keyfile"
)

// aggregatorSetup is what it takes to start an aggregator process.
type aggregatorSetup struct {
	key     crypto.PrivKey
	listen  string // libp2p multiaddr
	quic    string // libp2p QUIC multiaddr, "" for none
	http    string // host:port; "" for no HTTP server
	cfg     aggregator.Config
	allow   []peer.ID
	beatLog bool
	log     hclog.Logger
	// data is the store: a directory (SQLite) or a postgres:// URL; ""
	// keeps the nodes in memory only.
	data  string
	store store.WriterConfig
	// token, if set, is the bearer token DELETE /api/nodes/{peer} needs.
	token string
}

// runningAggregator is a libp2p host, the aggregator on it and its HTTP server.
type runningAggregator struct {
	host    host.Host
	agg     *aggregator.Aggregator
	store   store.Backend // nil without one
	http    *http.Server
	httpURL string
	served  chan error
}

// dialable is the multiaddr senders use, with /p2p/.
func (r *runningAggregator) dialable() string {
	return r.host.Addrs()[0].String() + "/p2p/" + r.host.ID().String()
}

func startAggregator(s aggregatorSetup) (*runningAggregator, error) {
	gater := aggregator.Gater(s.allow)
	// One registry for the aggregator and go-libp2p (libp2p_rcmgr_*, which
	// an alert reads); aggregator.New adds the Go and process collectors
	// and heartbeat_build_info (metrics.RegisterProcess): one owner.
	reg := prometheus.NewRegistry()
	hostAggOpts := []aggregator.Option{aggregator.WithLogger(s.log), aggregator.WithRegistry(reg)}
	// An invalid configuration is misuse (exit 2), told apart from a
	// runtime failure of NewHost below (exit 1). HostOptions only checks
	// and describes: it builds nothing.
	if _, err := aggregator.HostOptions(s.cfg, gater, hostAggOpts...); err != nil {
		return nil, aggregateFlags.usage(err)
	}
	var err error
	// The HTTP port first: a port in use fails the start before the
	// aggregator logs that it started.
	var ln net.Listener
	if s.http != "" {
		if ln, err = net.Listen("tcp", s.http); err != nil {
			return nil, fmt.Errorf("http listen %s: %w", s.http, err)
		}
	}
	closeLn := func() {
		if ln != nil {
			ln.Close()
		}
	}
	// aggregator.NewHost, not libp2p.New: it listens itself, without
	// SO_REUSEPORT, so a second aggregator on the port fails with an error
	// that matches syscall.EADDRINUSE, and go-libp2p logs nothing of it.
	listen := []string{s.listen}
	if s.quic != "" {
		listen = append(listen, s.quic)
	}
	h, err := aggregator.NewHost(s.cfg, gater, hostAggOpts, libp2p.Identity(s.key), libp2p.ListenAddrStrings(listen...))
	if err != nil {
		closeLn()
		return nil, err // names the address: "aggregator host: listen on …"
	}
	if len(h.Addrs()) == 0 {
		closeLn()
		h.Close()
		return nil, fmt.Errorf("libp2p host on %s: no listen address", s.listen)
	}
	opts := []aggregator.Option{aggregator.WithLogger(s.log), aggregator.WithBeatLog(s.beatLog), aggregator.WithRegistry(reg)}
	var b store.Backend
	if s.data != "" {
		ctx, cancel := context.WithTimeout(context.Background(), storeOpenTimeout)
		b, err = store.Open(ctx, s.data)
		cancel()
		if err != nil {
			closeLn()
			h.Close()
			return nil, fmt.Errorf("open the store: %w", err)
		}
		opts = append(opts, aggregator.WithStore(b, s.store))
	}
	closeStore := func() {
		if b != nil {
			b.Close()
		}
	}
	if gater != nil {
		opts = append(opts, aggregator.WithGater(gater))
	}
	if ln != nil {
		opts = append(opts, aggregator.WithDashboard())
	}
	agg, err := aggregator.New(h, s.cfg, opts...)
	if err != nil {
		closeLn()
		closeStore()
		h.Close()
		if b != nil {
			// HostOptions validated the config above: this is the
			// store's failure (loading the nodes), not misuse.
			return nil, err
		}
		return nil, aggregateFlags.usage(err)
	}
	r := &runningAggregator{host: h, agg: agg, store: b, served: make(chan error, 1)}
	if ln != nil {
		r.httpURL = "http://" + ln.Addr().String()
		var hopts []api.Option
		if s.token != "" {
			hopts = append(hopts, api.WithAdminToken(s.token))
		}
		r.http = api.NewServer(s.http, agg.HTTPHandler(hopts...))
		go func() { r.served <- r.http.Serve(ln) }()
	}
	return r, nil
}

// stop shuts the HTTP server down (finishing requests in flight, briefly),
// then the aggregator and the host.
func (r *runningAggregator) stop() error {
	var errs []error
	if r.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		errs = append(errs, r.http.Shutdown(ctx))
		cancel()
		if err := <-r.served; !errors.Is(err, http.ErrServerClosed) {
			errs = append(errs, err)
		}
	}
	errs = append(errs, r.agg.Close(), r.host.Close())
	if r.store != nil {
		errs = append(errs, r.store.Close())
	}
	return errors.Join(errs...)
}

func runAggregate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("aggregate", "[--listen MULTIADDR] [--listen-quic MULTIADDR] [--http ADDR] [--key FILE] [--max-nodes N] [--allow PEERID ...]\n"+
		"       [--expected-period D] [--down-retention D] [--max-line-bytes N] [--idle-timeout D] [--protocols v1,v2] [--accept-rate R]\n"+
		"       [--pacing-window D] [--data DIR | --store URL] [--flip-retention D] [--sample-retention D] [--admin-token FILE]\n"+
		"       [--beat-log] [--log-level L] [--log-json]")
	listen := fs.String("listen", "/ip4/127.0.0.1/tcp/4001", "libp2p TCP listen multiaddr (tcp/0 picks a free port; /ip4/0.0.0.0/... to accept remote nodes)")
	listenQUIC := fs.String("listen-quic", "", "also listen on this libp2p QUIC multiaddr, e.g. /ip4/0.0.0.0/udp/4001/quic-v1: one UDP socket for every QUIC sender, so the open-files limit does not bound them ('' for none)")
	httpAddr := fs.String("http", "127.0.0.1:8080", "HTTP host:port for the dashboard (/), /metrics, /api/nodes, /api/summary, /healthz (port 0 picks a free one; '' for none)")
	keyPath := fs.String("key", "", "private key file: keeps the peer id across restarts (created 0600 if missing; default DATA/aggregator.key with --data, else a new key each run)")
	maxNodes := fs.Int("max-nodes", aggregator.DefaultMaxNodes, "most nodes tracked at once (every state); sizes the libp2p resource limits")
	maxLine := fs.Int("max-line-bytes", aggregator.DefaultMaxLineBytes, "longest heartbeat line accepted; a longer one resets that stream")
	idle := fs.Duration("idle-timeout", aggregator.DefaultIdleTimeout, "reset a stream on which no complete line arrived for this long")
	period := fs.Duration("expected-period", heartbeat.DefaultBeatPeriod, "the senders' usual beat period; each node's own period is learned, and silence over 2x it is Suspect, over 5x Down")
	retention := fs.Duration("down-retention", aggregator.DefaultDownRetention, "when --max-nodes is reached, a new node may take the slot of the node Down the longest once Down longer than this")
	beatLog := fs.Bool("beat-log", false, "log one line per heartbeat")
	var protocols listFlag
	fs.Var(&protocols, "protocols", "protocols served, comma-separated: v1 (fil/heartbeat/1.0.0), v2 (/fil/heartbeat/2.0.0) (default v1,v2)")
	var pf pacingFlags
	pf.register(fs)
	var allow listFlag
	fs.Var(&allow, "allow", "allow only this peer id (repeatable, or comma-separated); default: everyone")
	data := fs.String("data", defaultDataDir, "directory of the node store (SQLite): nodes known before a restart come back ('' keeps them in memory only)")
	storeURL := fs.String("store", "", "postgres://… URL of a PostgreSQL store shared by several aggregators, instead of --data")
	flipRetention := fs.Duration("flip-retention", store.DefaultFlipRetention, "state flips older than this are pruned")
	sampleRetention := fs.Duration("sample-retention", store.DefaultSampleRetention, "height samples older than this are pruned")
	tokenFile := fs.String("admin-token", "", "file holding a token: retiring a node (heartbeat forget) then needs it as a bearer token, from any address; without it, only from loopback")
	var lf logFlags
	lf.register(fs, "info")
	if err := parse(fs, args, stdout); err != nil {
		return err
	}
	if err := checkListen(*listen); err != nil {
		return err
	}
	if err := checkListenQUIC(*listenQUIC); err != nil {
		return err
	}
	if err := checkHTTP(*httpAddr); err != nil {
		return err
	}
	for _, err := range []error{positive("expected-period", *period), positive("idle-timeout", *idle), positive("down-retention", *retention)} {
		if err != nil {
			return err
		}
	}
	if *maxNodes <= 0 {
		return usageError("--max-nodes %d: want at least 1", *maxNodes)
	}
	for _, p := range protocols {
		if p != aggregator.ProtocolV1 && p != aggregator.ProtocolV2 {
			return usageError("--protocols %q: want v1, v2 or v1,v2", protocols.String())
		}
	}
	acceptRate, pacingWindow, err := pf.values()
	if err != nil {
		return err
	}
	if *maxLine <= 0 {
		return usageError("--max-line-bytes %d: want a positive size", *maxLine)
	}
	for _, err := range []error{positive("flip-retention", *flipRetention), positive("sample-retention", *sampleRetention)} {
		if err != nil {
			return err
		}
	}
	target := *data
	if *storeURL != "" && flagSet(fs, "data") {
		// --data would be ignored (the store and the key live elsewhere).
		return usageError("--data %q and --store: give one (--data: SQLite in a directory; --store: PostgreSQL)", *data)
	}
	if *storeURL != "" {
		if !strings.HasPrefix(*storeURL, "postgres://") && !strings.HasPrefix(*storeURL, "postgresql://") {
			return usageError("--store %q: want a postgres:// or postgresql:// URL (use --data for a directory)", *storeURL)
		}
		target = *storeURL
	}
	var allowed []peer.ID
	for _, s := range allow {
		id, err := peer.Decode(s)
		if err != nil {
			return usageError("--allow %q: %v", s, err)
		}
		allowed = append(allowed, id)
	}
	log, err := lf.logger("heartbeat", stderr)
	if err != nil {
		return err
	}
	// The store is only worth keeping with the peer id its senders dial: by
	// default the key lives beside the SQLite store, so a restart (even
	// after kill -9) keeps both.
	if *keyPath == "" && *data != "" && *storeURL == "" {
		if err := os.MkdirAll(*data, 0o700); err != nil {
			return lf.failed(log, "aggregator", fmt.Errorf("--data %s: %w", *data, err))
		}
		*keyPath = filepath.Join(*data, "aggregator.key")
	}
	token := ""
	if *tokenFile != "" {
		if token, err = readToken(*tokenFile); err != nil {
			return lf.failed(log, "aggregator", err)
		}
	}
	return lf.failed(log, "aggregator", serveAggregator(ctx, stdout, log, *keyPath, aggregatorSetup{
		listen: *listen, quic: *listenQUIC, http: *httpAddr, allow: allowed, beatLog: *beatLog, log: log,
		data: target, token: token, store: store.WriterConfig{FlipRetention: *flipRetention, SampleRetention: *sampleRetention},
		cfg: aggregator.Config{MaxNodes: *maxNodes, ExpectedPeriod: *period, MaxLineBytes: *maxLine, IdleTimeout: *idle, DownRetention: *retention,
			Protocols: protocols, AcceptRate: acceptRate, PacingWindow: pacingWindow},
	}))
}

// serveAggregator runs the aggregator process until ctx ends.
func serveAggregator(ctx context.Context, stdout io.Writer, log hclog.Logger, keyPath string, setup aggregatorSetup) error {
	key, err := loadKey(keyPath)
	if err != nil {
		return err
	}
	setup.key = key
	r, err := startAggregator(setup)
	if err != nil {
		return err
	}
	period := setup.cfg.ExpectedPeriod
	fmt.Fprintf(stdout, "aggregator %s\n", r.dialable())
	for _, a := range r.host.Addrs()[1:] {
		fmt.Fprintf(stdout, "also      %s/p2p/%s\n", a, r.host.ID())
	}
	if r.httpURL != "" {
		fmt.Fprintf(stdout, "http      %s\n", r.httpURL)
		fmt.Fprintf(stdout, "dashboard %s/\n", r.httpURL)
	}
	fmt.Fprintf(stdout, "run a sender with:\n  heartbeat beat --target %s --beat-period %s\n", r.dialable(), period)
	select {
	case <-ctx.Done():
	case err := <-r.served:
		r.served <- err // stop reads it again
	}
	log.Info("shutting down")
	return r.stop()
}

// defaultDataDir is where `heartbeat aggregate` keeps its store.
const defaultDataDir = "./heartbeat-data"

// storeOpenTimeout bounds opening the store (a PostgreSQL server that does
// not answer).
const storeOpenTimeout = 30 * time.Second

// checkListen accepts a TCP multiaddr without a peer id: the aggregator
// listens on TCP (the transport legacy senders dial), and its peer id comes
// from --key.
func checkListen(s string) error {
	a, err := ma.NewMultiaddr(s)
	if err != nil {
		return usageError("--listen %q: %v", s, err)
	}
	hasTCP := false
	for _, c := range a {
		switch c.Protocol().Code {
		case ma.P_TCP:
			hasTCP = true
		case ma.P_P2P:
			return usageError("--listen %q: leave out /p2p/: the peer id comes from --key", s)
		case ma.P_UDP:
			return usageError("--listen %q: want a TCP address such as /ip4/0.0.0.0/tcp/4001 (senders dial TCP)", s)
		}
	}
	if !hasTCP {
		return usageError("--listen %q: want a TCP address such as /ip4/0.0.0.0/tcp/4001", s)
	}
	return nil
}

// checkListenQUIC accepts "" or a QUIC (quic-v1) multiaddr without a peer id.
func checkListenQUIC(s string) error {
	if s == "" {
		return nil
	}
	a, err := ma.NewMultiaddr(s)
	if err != nil {
		return usageError("--listen-quic %q: %v", s, err)
	}
	if _, err := a.ValueForProtocol(ma.P_P2P); err == nil {
		return usageError("--listen-quic %q: leave out /p2p/: the peer id comes from --key", s)
	}
	if _, err := a.ValueForProtocol(ma.P_QUIC_V1); err != nil {
		return usageError("--listen-quic %q: want a QUIC address such as /ip4/0.0.0.0/udp/4001/quic-v1", s)
	}
	return nil
}

// checkHTTP accepts "" (no HTTP server) or host:port with a numeric port.
func checkHTTP(s string) error {
	if s == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return usageError("--http %q: want host:port such as 127.0.0.1:8080: %v", s, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return usageError("--http %q: want a port number from 0 to 65535, got %q", s, port)
	}
	return nil
}

// loadKey reads or creates the key file, or makes a fresh key without one.
func loadKey(path string) (crypto.PrivKey, error) {
	if path != "" {
		return keyfile.LoadOrCreate(path)
	}
	key, _, err := crypto.GenerateEd25519Key(nil)
	return key, err
}
