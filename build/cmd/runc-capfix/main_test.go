package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSpecFilesFollowsRuncsArguments(t *testing.T) {
	// As containerd's shim and dockerd call runc.
	assert.Equal(t, []string{"/b/config.json"}, specFiles([]string{"--root", "/run/runc", "--log", "/l.json",
		"--log-format", "json", "create", "--bundle", "/b", "--pid-file", "/p", "id"}))
	assert.Equal(t, []string{"/b/config.json"}, specFiles([]string{"--systemd-cgroup", "run", "-b=/b", "id"}))
	assert.Equal(t, []string{"config.json"}, specFiles([]string{"create", "id"}))
	assert.Equal(t, []string{"/tmp/proc.json"}, specFiles([]string{"--root", "/r", "exec", "--process", "/tmp/proc.json", "--detach", "id"}))
	assert.Empty(t, specFiles([]string{"--root", "/r", "start", "id"}))
	assert.Empty(t, specFiles([]string{"exec", "id", "sh"}), "exec without --process reads no file")
}

func TestRewriteDropsTheCapabilityAndRaisesOOMScore(t *testing.T) {
	all := []any{"CAP_CHOWN", "CAP_SYS_RESOURCE", "CAP_NET_ADMIN"}
	spec := map[string]any{"ociVersion": "1.0.2", "process": map[string]any{
		"oomScoreAdj":  -998,
		"capabilities": map[string]any{"bounding": all, "effective": all, "permitted": all, "inheritable": all},
	}}
	path := writeJSON(t, spec)
	require.NoError(t, rewrite(path, 0))
	got := readJSON(t, path)["process"].(map[string]any)
	for set, caps := range got["capabilities"].(map[string]any) {
		assert.Equal(t, []any{"CAP_CHOWN", "CAP_NET_ADMIN"}, caps, set)
	}
	assert.EqualValues(t, 0, got["oomScoreAdj"])
	assert.Equal(t, "1.0.2", readJSON(t, path)["ociVersion"], "the rest is kept")

	// A --process file holds the process at its top level; a score at or
	// above the floor stays.
	proc := writeJSON(t, map[string]any{"oomScoreAdj": 500, "capabilities": map[string]any{"bounding": all}})
	require.NoError(t, rewrite(proc, 0))
	assert.EqualValues(t, 500, readJSON(t, proc)["oomScoreAdj"])
	assert.Equal(t, []any{"CAP_CHOWN", "CAP_NET_ADMIN"}, readJSON(t, proc)["capabilities"].(map[string]any)["bounding"])
}

func writeJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	p := filepath.Join(t.TempDir(), "config.json")
	require.NoError(t, os.WriteFile(p, b, 0o600))
	return p
}

func readJSON(t *testing.T, p string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	return m
}
