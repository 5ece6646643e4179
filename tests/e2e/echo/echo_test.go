package echo

import (
	"io"
	"net"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The client loop answers one line per request, naming the server that
// answered or the error, and keeps going after bad requests and failures.
func TestClientLoop(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := Serve(l, "echo-7")
	defer srv.Stop()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closedAddr := closed.Addr().String()
	closed.Close()

	in := strings.Join([]string{
		"2s " + l.Addr().String(),
		"nonsense",
		"200ms " + closedAddr,
		"2s " + l.Addr().String(),
	}, "\n") + "\n"
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	var out strings.Builder
	go func() { done <- ClientLoop(strings.NewReader(in), pw); pw.Close() }()
	b, err := io.ReadAll(pr)
	require.NoError(t, err)
	require.NoError(t, <-done)
	out.Write(b)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 4)
	assert.Equal(t, "ok echo-7", lines[0])
	assert.True(t, strings.HasPrefix(lines[1], "err bad request"), lines[1])
	assert.True(t, strings.HasPrefix(lines[2], "err "), lines[2])
	assert.Equal(t, "ok echo-7", lines[3])
}
