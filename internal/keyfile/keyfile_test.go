package keyfile

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"
)

func TestLoadOrCreateKeepsTheIdentity(t *testing.T) {
	path := filepath.Join(t.TempDir(), "id.key")
	k1, err := LoadOrCreate(path)
	require.NoError(t, err)
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	k2, err := LoadOrCreate(path)
	require.NoError(t, err)
	id1, err := peer.IDFromPrivateKey(k1)
	require.NoError(t, err)
	id2, err := peer.IDFromPrivateKey(k2)
	require.NoError(t, err)
	require.Equal(t, id1, id2)
}

func TestCorruptKeyFileIsAnError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "id.key")
	require.NoError(t, os.WriteFile(path, []byte("not a key"), 0o600))
	_, err := LoadOrCreate(path)
	require.ErrorContains(t, err, path)
}
