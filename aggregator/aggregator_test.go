package aggregator

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	mh "github.com/multiformats/go-multihash"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/aggregator/api"
	"github.com/p2pbeat/heartbeat/aggregator/metrics"
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/wire"
)

func genesisCID(t *testing.T) cid.Cid {
	t.Helper()
	h, err := mh.Sum([]byte("genesis"), mh.BLAKE2B_MIN+31, -1)
	require.NoError(t, err)
	return cid.NewCidV1(cid.DagCBOR, h)
}

// A hand-written 2019 sender (a plain json.Encoder on the stream) and a
// later one (GenesisCID, an unknown field) are both accepted; identity is
// the peer id, not the nickname; a graceful close makes the node Left.
func TestLegacySenders(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, Config{}, nil)

	old := newSender(t)
	st := old.open(t, e)
	encode(t, st, legacyHeartbeat{Head: "{ bafy2bzaceabc bafy2bzacedef }", Height: 444, Nickname: "BobHoblaw", MinerAddress: "t01234"})
	e.rec.waitBeats(t, old.id(), 1)
	n, ok := e.a.Tracker().Node(old.id())
	require.True(t, ok)
	require.Equal(t, tracker.Up, n.State)
	require.Equal(t, "{ bafy2bzaceabc bafy2bzacedef }", n.Head)
	require.Equal(t, uint64(444), n.Height)
	require.Equal(t, "BobHoblaw", n.Nickname)
	require.Equal(t, "t01234", n.MinerAddress)
	require.Equal(t, "", n.Genesis)
	require.Equal(t, uint64(1), n.Beats)
	require.Equal(t, tracker.StreamOpen, n.Stream)

	// A later sender: GenesisCID, an unknown field, and the same nickname
	// as the first node, which must not touch the first node's record.
	g := genesisCID(t)
	later := newSender(t)
	st2 := later.open(t, e)
	_, err := fmt.Fprintf(st2, `{"Head":"{ bafy2bzaceabc }","Height":12,"Nickname":"BobHoblaw","MinerAddress":"","GenesisCID":{"/":"%s"},"Version":"v2"}`+"\n", g)
	require.NoError(t, err)
	_, err = st2.Write([]byte(`{"Height":13,"Head":"{ x }","Nickname":"BobHoblaw","GenesisCID":null}` + "\n"))
	require.NoError(t, err)
	hb := e.rec.waitBeats(t, later.id(), 2)
	require.Equal(t, uint64(13), hb.Height)
	n2, ok := e.a.Tracker().Node(later.id())
	require.True(t, ok)
	require.Equal(t, uint64(13), n2.Height)
	require.Equal(t, "{ x }", n2.Head)
	require.Equal(t, "BobHoblaw", n2.Nickname)
	require.Equal(t, uint64(2), n2.Beats)
	n1, _ := e.a.Tracker().Node(old.id())
	require.Equal(t, n, n1, "another node's nickname must not touch this record")

	// The GenesisCID line was recorded before the null one replaced it.
	e.rec.mu.Lock()
	first := e.rec.beats[later.id()][0]
	e.rec.mu.Unlock()
	require.NotNil(t, first.GenesisCID)
	require.True(t, first.GenesisCID.Equals(g))

	// A graceful end: the sender closes, the aggregator sees EOF, closes its
	// side (the sender reads EOF, not a reset) and marks the node Left.
	require.NoError(t, st.CloseWrite())
	require.NoError(t, e.rec.waitEnds(t, old.id(), 1))
	var buf [8]byte
	_, err = st.Read(buf[:])
	require.ErrorIs(t, err, io.EOF)
	n1, _ = e.a.Tracker().Node(old.id())
	require.Equal(t, tracker.Left, n1.State)
	require.Equal(t, tracker.StreamClosed, n1.Stream)
	require.Equal(t, 2.0, counter(t, e.a.Registry(), "heartbeat_streams_opened_total"))
	require.Equal(t, 1.0, counter(t, e.a.Registry(), "heartbeat_streams_closed_total", "how", metrics.ClosedEOF))

	// The HTTP API shows both nodes, keyed by peer id.
	rr := httptest.NewRecorder()
	e.a.HTTPHandler().ServeHTTP(rr, httptest.NewRequest(http.MethodGet, "/api/nodes", nil))
	require.Equal(t, http.StatusOK, rr.Code)
	var page api.NodePage
	require.NoError(t, json.Unmarshal(rr.Body.Bytes(), &page))
	require.Len(t, page.Nodes, 2)
	require.Empty(t, page.Next)
	byID := map[string]api.Node{}
	for _, n := range page.Nodes {
		byID[n.PeerID] = n
	}
	require.Equal(t, "left", byID[old.id().String()].State)
	require.Equal(t, uint64(444), byID[old.id().String()].Height)
	require.Equal(t, "up", byID[later.id().String()].State)
	rr = httptest.NewRecorder()
	e.a.HTTPHandler().ServeHTTP(rr, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	require.Equal(t, http.StatusOK, rr.Code)
	require.Contains(t, rr.Body.String(), `heartbeat_heartbeats_received_total 3`)

	// One JSON log line per state change, with the agreed keys.
	changes := e.log.entries(t, "node state changed")
	var sawUp, sawLeft bool
	for _, c := range changes {
		if c["peer_id"] != old.id().String() {
			continue
		}
		require.Equal(t, "BobHoblaw", c["nickname"])
		require.NotEmpty(t, c["last_seen"])
		switch {
		case c["from"] == "joining" && c["to"] == "up":
			sawUp = true
		case c["from"] == "up" && c["to"] == "left":
			sawLeft = true
		}
	}
	require.True(t, sawUp, "joining -> up logged: %v", changes)
	require.True(t, sawLeft, "up -> left logged: %v", changes)
}

// Each malformed input gets its counter and a reset, and ends that stream
// only: a bystander's stream keeps flowing and its record changes only by
// its own heartbeats.
func TestBadInput(t *testing.T) {
	checkLeaks(t)
	const maxLine = 1024
	e := newEnv(t, Config{MaxLineBytes: maxLine}, nil)

	bystander := newSender(t)
	bst := bystander.open(t, e)
	beats := 0
	beat := func() {
		t.Helper()
		beats++
		encode(t, bst, legacyHeartbeat{Head: "{ h }", Height: uint64(beats), Nickname: "bystander", MinerAddress: "t0100"})
		e.rec.waitBeats(t, bystander.id(), beats)
	}
	beat()

	bad := newSender(t)
	cases := []struct {
		name   string
		input  []byte
		reason string
	}{
		{"not JSON", []byte("hello, aggregator\n"), metrics.ReasonNotJSON},
		{"JSON but not an object", []byte("[1,2,3]\n"), metrics.ReasonNotJSON},
		{"height as string", []byte(`{"Head":"{ h }","Height":"5"}` + "\n"), metrics.ReasonBadType},
		{"negative height", []byte(`{"Height":-1}` + "\n"), metrics.ReasonBadType},
		{"fractional height", []byte(`{"Height":1.5}` + "\n"), metrics.ReasonBadType},
		{"numeric nickname", []byte(`{"Nickname":7}` + "\n"), metrics.ReasonBadType},
		{"oversized line", append(bytes.Repeat([]byte("x"), maxLine+1), '\n'), metrics.ReasonLineTooLong},
		{"no newline past the limit", bytes.Repeat([]byte(`{"Head":"`), 8*maxLine), metrics.ReasonLineTooLong},
		{"invalid UTF-8", []byte("{\"Nickname\":\"\xff\xfe\"}\n"), metrics.ReasonInvalidUTF8},
		{"bad line after a good one", []byte(`{"Height":1}` + "\n" + `{"Height":true}` + "\n"), metrics.ReasonBadType},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := rejected(t, e, tc.reason)
			snapshot, ok := e.a.Tracker().Node(bystander.id())
			require.True(t, ok)

			st := bad.open(t, e)
			// The write may fail part-way when the reset overtakes it.
			_, _ = st.Write(tc.input)
			requireReset(t, st)
			err := e.rec.waitEnds(t, bad.id(), i+1)
			require.Error(t, err)
			require.Equal(t, before+1, rejected(t, e, tc.reason), "counter for %s", tc.reason)
			require.Equal(t, float64(i+1), counter(t, e.a.Registry(), "heartbeat_streams_closed_total", "how", metrics.ClosedError))
			switch tc.reason {
			case metrics.ReasonLineTooLong:
				require.ErrorIs(t, err, ErrLineTooLong)
			default:
				var de *wire.DecodeError
				require.ErrorAs(t, err, &de)
				require.Equal(t, tc.reason, string(de.Reason))
			}

			// The bystander's record did not move, and its stream flows on.
			now, _ := e.a.Tracker().Node(bystander.id())
			require.Equal(t, snapshot, now)
			beat()
			now, _ = e.a.Tracker().Node(bystander.id())
			require.Equal(t, snapshot.Beats+1, now.Beats)
			require.Equal(t, uint64(beats), now.Height)
			require.Equal(t, tracker.Up, now.State)
		})
	}

	// Rejections are logged, rate-limited per peer: the first one only.
	logged := e.log.entries(t, "heartbeat stream rejected")
	require.Len(t, logged, 1, "one line per peer per RejectLogInterval")
	require.Equal(t, bad.id().String(), logged[0]["peer_id"])
	require.NotEmpty(t, logged[0]["error"])
}

// A stream that sends no complete line within IdleTimeout is reset and
// counted; a partial line is not a sign of life. (That the deadline is
// re-armed after each complete line, and only then, is checked without a
// network, and without timing, in TestIdleDeadlineArming.)
func TestIdleTimeout(t *testing.T) {
	checkLeaks(t)
	// A wall-clock deadline: short, but longer than the period. The test
	// does not race it: whenever the partial line arrives, it must not
	// re-arm the deadline.
	cfg := Config{ExpectedPeriod: 50 * time.Millisecond, IdleTimeout: 200 * time.Millisecond}
	e := newEnv(t, cfg, nil)
	s := newSender(t)

	st := s.open(t, e)
	_, err := st.Write([]byte(`{"Head":`))
	require.NoError(t, err)
	requireReset(t, st)
	err = e.rec.waitEnds(t, s.id(), 1)
	require.ErrorIs(t, err, ErrIdleTimeout)
	require.Equal(t, 1.0, rejected(t, e, metrics.ReasonIdleTimeout))
	require.Zero(t, e.rec.beatCount(s.id()))
}

// A newer stream from the same peer supersedes the older, which is reset
// and counted; the node stays Up on the new stream.
func TestSupersedingStream(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, Config{}, nil)
	s := newSender(t)

	first := s.open(t, e)
	encode(t, first, legacyHeartbeat{Head: "{ a }", Height: 1, Nickname: "n"})
	e.rec.waitBeats(t, s.id(), 1)

	second := s.open(t, e)
	encode(t, second, legacyHeartbeat{Head: "{ b }", Height: 2, Nickname: "n"})
	requireReset(t, first)
	require.ErrorIs(t, e.rec.waitEnds(t, s.id(), 1), ErrSuperseded)
	e.rec.waitBeats(t, s.id(), 2)
	require.Equal(t, 1.0, rejected(t, e, metrics.ReasonSuperseded))

	n, ok := e.a.Tracker().Node(s.id())
	require.True(t, ok)
	require.Equal(t, tracker.Up, n.State)
	require.Equal(t, tracker.StreamOpen, n.Stream)
	require.Equal(t, uint64(2), n.Streams)
	require.Equal(t, "{ b }", n.Head)

	// The new stream still works and ends gracefully.
	encode(t, second, legacyHeartbeat{Head: "{ c }", Height: 3, Nickname: "n"})
	e.rec.waitBeats(t, s.id(), 3)
	require.NoError(t, second.CloseWrite())
	require.NoError(t, e.rec.waitEnds(t, s.id(), 2))
	n, _ = e.a.Tracker().Node(s.id())
	require.Equal(t, tracker.Left, n.State)
}

// The allowlist gater refuses a peer that is not listed before any stream,
// and the refusal is counted; a listed peer gets through.
func TestAllowlist(t *testing.T) {
	checkLeaks(t)
	listed := newSender(t)
	other := newSender(t)
	g := Gater([]peer.ID{listed.id()})
	e := newEnv(t, Config{}, g, WithGater(g))

	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	// The dialer may finish its side of the handshake before the gater's
	// refusal closes the connection, so the refusal shows on Connect or,
	// at the latest, on the first stream.
	err := other.h.Connect(ctx, e.addrInfo())
	if err == nil {
		var st network.Stream
		st, err = other.h.NewStream(ctx, e.h.ID(), wire.ProtocolID)
		if err == nil {
			_, err = st.Write([]byte(`{"Height":1}` + "\n"))
			if err == nil {
				_, err = st.Read(make([]byte, 1))
			}
			_ = st.Reset()
		}
	}
	require.Error(t, err, "a non-listed peer must be refused")
	require.GreaterOrEqual(t, g.Refused(), uint64(1))
	require.GreaterOrEqual(t, rejected(t, e, metrics.ReasonNotAllowed), 1.0)
	_, known := e.a.Tracker().Node(other.id())
	require.False(t, known)

	st := listed.open(t, e)
	encode(t, st, legacyHeartbeat{Head: "{ h }", Height: 1})
	e.rec.waitBeats(t, listed.id(), 1)

	require.Nil(t, Gater(nil), "an empty allowlist means no allowlist")
	require.True(t, Gater(nil).Allows(other.id()))
}

// The stream handler enforces the allowlist too, for a host whose gater
// did not see the connection (here: a host built without one).
func TestAllowlistWithoutHostGater(t *testing.T) {
	checkLeaks(t)
	listed := newSender(t)
	other := newSender(t)
	e := newEnv(t, Config{}, nil, WithGater(Gater([]peer.ID{listed.id()})))

	st := other.open(t, e)
	_, _ = st.Write([]byte(`{"Height":1}` + "\n"))
	requireReset(t, st)
	require.Equal(t, 1.0, rejected(t, e, metrics.ReasonNotAllowed))
	require.Zero(t, e.a.Tracker().Len())
}

// Past MaxNodes a new peer is refused and counted; known peers are not.
func TestMaxNodes(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, Config{MaxNodes: 1}, nil)
	first, second := newSender(t), newSender(t)

	st := first.open(t, e)
	encode(t, st, legacyHeartbeat{Head: "{ h }", Height: 1})
	e.rec.waitBeats(t, first.id(), 1)

	st2 := second.open(t, e)
	_, _ = st2.Write([]byte(`{"Height":1}` + "\n"))
	requireReset(t, st2)
	require.ErrorIs(t, e.rec.waitEnds(t, second.id(), 1), tracker.ErrFull)
	require.Equal(t, 1.0, rejected(t, e, metrics.ReasonTooManyNodes))
	_, known := e.a.Tracker().Node(second.id())
	require.False(t, known)

	// The known peer keeps beating.
	encode(t, st, legacyHeartbeat{Head: "{ h }", Height: 2})
	e.rec.waitBeats(t, first.id(), 2)
}

// Close with live streams resets them, returns after every handler and the
// sweeper have returned, and is idempotent; Run returns after Close.
func TestCloseWithLiveStreams(t *testing.T) {
	checkLeaks(t)
	// Legacy senders never read, so Close waits CloseTimeout for them.
	e := newEnv(t, Config{CloseTimeout: 300 * time.Millisecond}, nil)
	runDone := make(chan error, 1)
	go func() { runDone <- e.a.Run(context.Background()) }()

	// Three legacy senders (never read, never close) and two that answer
	// the aggregator's half-close with their own, as ours does.
	var (
		legacy   []network.Stream
		answered []chan error
		ids      []peer.ID
	)
	for i := range 5 {
		s := newSender(t)
		st := s.open(t, e)
		encode(t, st, legacyHeartbeat{Head: "{ h }", Height: uint64(i)})
		e.rec.waitBeats(t, s.id(), 1)
		ids = append(ids, s.id())
		if i < 3 {
			legacy = append(legacy, st)
			continue
		}
		got := make(chan error, 1)
		go func() {
			_, err := io.Copy(io.Discard, st) // until the aggregator's FIN
			if err == nil {
				err = st.CloseWrite()
			}
			got <- err
		}()
		answered = append(answered, got)
	}
	require.NoError(t, e.a.Close())
	for _, got := range answered {
		require.NoError(t, recv(t, got), "an orderly EOF, then our own half-close")
	}
	for _, st := range legacy {
		requireEOF(t, st)
	}
	for i, id := range ids {
		err := e.rec.waitEnds(t, id, 1)
		require.ErrorIs(t, err, ErrClosed)
		if i >= 3 {
			require.ErrorIs(t, err, io.EOF, "the sender closed its side")
		} else {
			require.True(t, isTimeout(err), "the drain timed out: %v", err)
		}
		n, _ := e.a.Tracker().Node(id)
		require.Equal(t, tracker.Up, n.State, "a shutdown is not a node leaving")
	}
	require.Equal(t, 5.0, counter(t, e.a.Registry(), "heartbeat_streams_closed_total", "how", metrics.ClosedError))
	require.Zero(t, counter(t, e.a.Registry(), "heartbeat_streams_closed_total", "how", metrics.ClosedEOF))
	require.Zero(t, rejected(t, e, metrics.ReasonIdleTimeout))
	require.NoError(t, recv(t, runDone))
	require.NoError(t, e.a.Close())
	e.a.mu.Lock()
	require.Empty(t, e.a.streams)
	e.a.mu.Unlock()

	// A stream opened after Close finds no handler.
	s := newSender(t)
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	require.NoError(t, s.h.Connect(ctx, e.addrInfo()))
	st, err := s.h.NewStream(ctx, e.h.ID(), wire.ProtocolID)
	if err == nil {
		// Lazy negotiation: the refusal shows on first use.
		_, err = st.Write([]byte("{}\n"))
		if err == nil {
			_, err = st.Read(make([]byte, 1))
		}
		_ = st.Reset()
	}
	require.Error(t, err)
}

// Run returns ctx's error when ctx ends it, after closing.
func TestRunContext(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, Config{}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.a.Run(ctx) }()
	cancel()
	require.ErrorIs(t, recv(t, done), context.Canceled)
	select {
	case <-e.a.done:
	default:
		t.Fatal("Run returned before closing")
	}
}

func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	timer := time.NewTimer(guard)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		require.FailNow(t, "timed out")
		panic("unreachable")
	}
}

// A sender that half-closes its stream gets the aggregator's own close
// (EOF), never a reset: 200 stops in a row on one connection, each counted
// as a clean end.
func TestHalfCloseAnsweredWithClose(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, Config{}, nil)
	s := newSender(t)
	const stops = 200
	for i := range stops {
		st := s.open(t, e)
		encode(t, st, legacyHeartbeat{Head: "{ h }", Height: uint64(i)})
		require.NoError(t, st.CloseWrite())
		requireEOF(t, st)
		require.NoError(t, e.rec.waitEnds(t, s.id(), i+1))
		require.NoError(t, st.Close())
	}
	require.Equal(t, float64(stops), counter(t, e.a.Registry(), "heartbeat_streams_closed_total", "how", metrics.ClosedEOF))
	require.Zero(t, counter(t, e.a.Registry(), "heartbeat_streams_closed_total", "how", metrics.ClosedReset))
	require.Zero(t, counter(t, e.a.Registry(), "heartbeat_streams_closed_total", "how", metrics.ClosedError))
	n, _ := e.a.Tracker().Node(s.id())
	require.Equal(t, tracker.Left, n.State)
	require.Equal(t, uint64(stops), n.Beats)
}
