package cli

import (
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

var updateDocs = flag.Bool("update", false, "rewrite the usage blocks in docs/cli.md from the commands' help")

const cliDoc = "../../docs/cli.md"

// usageBlock is a fenced block of docs/cli.md that starts with a usage line.
var usageBlock = regexp.MustCompile("(?s)```\n(usage: heartbeat (\\S+).*?)```\n")

// Every usage block in docs/cli.md is the command's help, byte for byte,
// and every command has one.
func TestDocsUsageBlocksMatchTheHelp(t *testing.T) {
	b, err := os.ReadFile(cliDoc)
	require.NoError(t, err)
	doc := string(b)
	seen := map[string]bool{}
	fixed := usageBlock.ReplaceAllStringFunc(doc, func(block string) string {
		m := usageBlock.FindStringSubmatch(block)
		args := []string{"help", m[2]}
		if m[2] == "<command>" {
			args = []string{"help"}
		}
		code, out, errs := run(t, args...)
		require.Equal(t, 0, code, errs)
		seen[m[2]] = true
		if !*updateDocs {
			require.Equal(t, out, m[1], "docs/cli.md's usage of %q differs from the binary's (go test ./internal/cli -run DocsUsage -update)", m[2])
		}
		return "```\n" + out + "```\n"
	})
	if *updateDocs {
		require.NoError(t, os.WriteFile(cliDoc, []byte(fixed), 0o644))
	}
	require.True(t, seen["<command>"], "the command list")
	for _, c := range commands() {
		if c.name != "version" {
			require.True(t, seen[c.name], "docs/cli.md has no usage block for %s", c.name)
		}
	}
	require.False(t, strings.Contains(doc, "go get github.com/p2pbeat/heartbeat\n"))
}

// Every repository path the docs name in backticks exists, so a moved file
// shows up as a failing test rather than a stale doc.
func TestDocsPathsExist(t *testing.T) {
	files, err := filepath.Glob("../../docs/*.md")
	require.NoError(t, err)
	files = append(files, "../../README.md")
	path := regexp.MustCompile("`((?:aggregator|cmd|docs|fsm|internal|sim|transport|wire|clockwork)/[\\w./-]*\\w)`")
	checked := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		for _, m := range path.FindAllStringSubmatch(string(b), -1) {
			_, err := os.Stat(filepath.Join("../..", m[1]))
			require.NoError(t, err, "%s names %s", filepath.Base(f), m[1])
			checked++
		}
	}
	require.Positive(t, checked)
}

// Every flag a command takes is in the synopsis of its usage line(s), the
// part of its help above "flags:" (the aggregate synopsis once left out
// --data, --store, --admin-token and both retentions). The sim synopsis
// names its flags the same way.
func TestSynopsisNamesEveryFlag(t *testing.T) {
	defined := regexp.MustCompile(`(?m)^  -(\S+)`)
	for _, c := range commands() {
		code, out, errs := run(t, "help", c.name)
		require.Equal(t, 0, code, errs)
		synopsis, flags, ok := strings.Cut(out, "\nflags:\n")
		if !ok {
			continue // a command without flags
		}
		for _, m := range defined.FindAllStringSubmatch(flags, -1) {
			require.Contains(t, synopsis, "--"+m[1], "heartbeat %s: --%s is missing from the usage line", c.name, m[1])
		}
	}
}
