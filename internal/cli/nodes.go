package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pbeat/heartbeat/aggregator/api"
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
)

// defaultURL is the aggregator's HTTP address that nodes and forget ask:
// aggregate's default --http.
const defaultURL = "http://127.0.0.1:8080"

// clientTimeout bounds one request of nodes and forget.
const clientTimeout = 30 * time.Second

// maxNickWidth bounds the nickname column of the nodes table, in
// characters (runes, as text/tabwriter counts them), quotes included: a
// node may send MaxLabelBytes (256) of nickname, which would push the
// other columns off the screen.
const maxNickWidth = 32

// nickCell is a node's nickname as the nodes table shows it: quoted as %q
// does (node text is untrusted: control characters and invalid UTF-8 stay
// out of the terminal, escaped), and cut to maxNickWidth characters when
// longer, the cut marked by "…" after the closing quote. The cut falls
// between two characters of the nickname, never inside a character or an
// escape.
func nickCell(s string) string {
	q := strconv.Quote(s)
	if utf8.RuneCountInString(q) <= maxNickWidth {
		return q
	}
	var b strings.Builder
	b.WriteByte('"')
	width := 3 // the two quotes and "…"
	for i := 0; i < len(s); {
		_, size := utf8.DecodeRuneInString(s[i:])
		piece := strconv.Quote(s[i : i+size])
		piece = piece[1 : len(piece)-1]
		w := utf8.RuneCountInString(piece)
		if width+w > maxNickWidth {
			break
		}
		b.WriteString(piece)
		width += w
		i += size
	}
	b.WriteString(`"…`) // outside the quotes: not the node's text
	return b.String()
}

// maxErrorBody bounds the part of an error answer that is printed.
const maxErrorBody = 1 << 10

func checkURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", usageError("--url %q: want the aggregator's HTTP address such as %s", s, defaultURL)
	}
	return strings.TrimSuffix(s, "/"), nil
}

// httpFailure turns a non-2xx answer into an error with the server's reason.
func httpFailure(resp *http.Response, what string) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	return fmt.Errorf("%s: %s: %s", what, resp.Status, strings.TrimSpace(string(b)))
}

func runNodes(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlagSet("nodes", "[--state S] [--url URL]")
	state := fs.String("state", "", "only nodes in this state: "+stateNames())
	u := fs.String("url", defaultURL, "the aggregator's HTTP address (its --http)")
	if err := parse(fs, args, stdout); err != nil {
		return err
	}
	base, err := checkURL(*u)
	if err != nil {
		return err
	}
	if *state != "" && !validState(*state) {
		return usageError("--state %q: want one of %s", *state, stateNames())
	}
	client := &http.Client{Timeout: clientTimeout}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER ID\tNICKNAME\tSTATE\tSINCE\tHEIGHT\tLAST SEEN")
	cursor, n := "", 0
	for {
		q := url.Values{"limit": {fmt.Sprint(api.MaxLimit)}}
		if *state != "" {
			q.Set("state", *state)
		}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/nodes?"+q.Encode(), nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("list nodes: %w", err)
		}
		var page api.NodePage
		if resp.StatusCode != http.StatusOK {
			err = httpFailure(resp, "list nodes")
		} else if derr := json.NewDecoder(resp.Body).Decode(&page); derr != nil {
			err = fmt.Errorf("list nodes: bad answer from %s: %w", base, derr)
		}
		resp.Body.Close()
		if err != nil {
			return err
		}
		for _, nd := range page.Nodes {
			last := nd.LastSeen
			if last == "" {
				last = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", nd.PeerID, nickCell(nd.Nickname), nd.State, nd.Since, nd.Height, last)
			n++
		}
		if cursor = page.Next; cursor == "" {
			break
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d node(s)\n", n)
	return nil
}

func runForget(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlagSet("forget", "PEERID [--url URL] [--admin-token FILE]")
	u := fs.String("url", defaultURL, "the aggregator's HTTP address (its --http)")
	tokenFile := fs.String("admin-token", "", "file holding the aggregator's admin token (needed when it runs with --admin-token)")
	// The peer id may come before or after the flags.
	var ids []string
	for {
		if err := parseFlags(fs, args, stdout); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		ids, args = append(ids, fs.Arg(0)), fs.Args()[1:]
	}
	switch len(ids) {
	case 0:
		return usageError("a PEERID is required")
	case 1:
	default:
		return usageError("unexpected argument %q", ids[1])
	}
	id, err := peer.Decode(ids[0])
	if err != nil {
		return usageError("PEERID %q: %v", ids[0], err)
	}
	base, err := checkURL(*u)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, base+"/api/nodes/"+id.String(), nil)
	if err != nil {
		return err
	}
	if *tokenFile != "" {
		tok, err := readToken(*tokenFile)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := (&http.Client{Timeout: clientTimeout}).Do(req)
	if err != nil {
		return fmt.Errorf("retire %s: %w", id, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return httpFailure(resp, "retire "+id.String())
	}
	fmt.Fprintf(stdout, "retired %s: kept as retired in the store, no longer alerts\n", id)
	return nil
}

// readToken reads an admin token file: its content without surrounding
// white space, which must not be empty.
func readToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read admin token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("read admin token: %s is empty", path)
	}
	return tok, nil
}

func stateNames() string {
	var names []string
	for _, st := range tracker.States() {
		names = append(names, st.String())
	}
	return strings.Join(names, ", ")
}

func validState(s string) bool {
	for _, st := range tracker.States() {
		if st.String() == s {
			return true
		}
	}
	return false
}
