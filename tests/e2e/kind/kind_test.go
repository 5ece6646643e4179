//go:build e2ekind

package kind

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/pilot-consul/pilot-consul/tests/e2e"
)

// cluster is shared by every case: one kind cluster per run.
var cluster *Cluster

func TestMain(m *testing.M) {
	if err := Preflight(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cfg, err := FromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	logf := func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	cluster, err = Setup(context.Background(), cfg, logf)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kind suite setup failed:", err)
		os.Exit(1)
	}
	code := m.Run()
	if code != 0 {
		cluster.DumpIstiodLog()
	}
	cluster.Teardown()
	os.Exit(code)
}

// The same cases the local suite runs (tests/integration TestSharedCases),
// here with Envoy sidecars, in-cluster Consul and our image.
func TestSharedCases(t *testing.T) {
	for _, c := range e2e.Cases {
		t.Run(c.Name, func(t *testing.T) { c.Run(t, cluster) })
	}
}
