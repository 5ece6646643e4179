package harness

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
)

// TestHost is a network namespace joined to this host by a veth pair, with
// an address in 198.18.0.0/15 (benchmarking range, never the machine's own
// network). Kubernetes rejects loopback endpoints, so Kubernetes Services
// are backed by processes in such hosts.
type TestHost struct {
	Name string
	IP   string // the namespace side
}

var hostSeq atomic.Int32

// NewTestHost creates a namespace; it and its veth are deleted at cleanup.
func NewTestHost(env Env) (*TestHost, error) {
	n := int(hostSeq.Add(1))
	// Unique per process and per host: parallel runs never collide.
	id := fmt.Sprintf("pc%d-%d", os.Getpid()%100000, n)
	third := (os.Getpid()*7 + n) % 250
	hostIP, nsIP := fmt.Sprintf("198.18.%d.1", third), fmt.Sprintf("198.18.%d.2", third)
	h := &TestHost{Name: id, IP: nsIP}
	env.Cleanup(func() {
		_ = exec.Command("ip", "netns", "del", id).Run()
		_ = exec.Command("ip", "link", "del", id+"h").Run()
	})
	for _, args := range [][]string{
		{"netns", "add", id},
		{"link", "add", id + "h", "type", "veth", "peer", "name", id + "n"},
		{"link", "set", id + "n", "netns", id},
		{"addr", "add", hostIP + "/30", "dev", id + "h"},
		{"link", "set", id + "h", "up"},
		{"-n", id, "addr", "add", nsIP + "/30", "dev", id + "n"},
		{"-n", id, "link", "set", id + "n", "up"},
		{"-n", id, "link", "set", "lo", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("test host: ip %s: %v: %s (needs root and iproute2)",
				strings.Join(args, " "), err, out)
		}
	}
	return h, nil
}

// Start runs bin inside the namespace as a Process.
func (h *TestHost) Start(env Env, name, bin string, args []string, extraEnv []string) (*Process, error) {
	p, err := Start(env.TempDir(), name, "ip", append([]string{"netns", "exec", h.Name, bin}, args...), extraEnv)
	if err != nil {
		return nil, err
	}
	env.Cleanup(p.Stop)
	return p, nil
}
