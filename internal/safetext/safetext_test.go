package safetext_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/internal/safetext"
)

func TestPrefix(t *testing.T) {
	for _, tc := range []struct {
		s    string
		n    int
		want string
	}{
		{"abc", 3, "abc"},
		{"abc", 5, "abc"},
		{"abc", 2, "ab"},
		{"aé", 2, "a"}, // é is 2 bytes: not cut inside
		{"aé", 3, "aé"},
		{"日本", 4, "日"},
		{"日本", 2, ""},
		{"abc", 0, ""},
	} {
		require.Equal(t, tc.want, safetext.Prefix(tc.s, tc.n), "%q %d", tc.s, tc.n)
	}
}

func TestForLog(t *testing.T) {
	require.Equal(t, "plain text é", safetext.ForLog("plain text é"))
	require.Equal(t, `"two\nlines"`, safetext.ForLog("two\nlines"))
	require.Equal(t, `"\x1b[31mred"`, safetext.ForLog("\x1b[31mred"))
	require.Equal(t, `"\xff"`, safetext.ForLog("\xff"), "invalid UTF-8 is quoted")
}
