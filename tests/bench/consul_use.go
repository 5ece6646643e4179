package bench

import (
	"time"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// ConsulUse is what Consul served over a window: requests and response
// bytes as counted by the proxy in front of it, and the CPU the agent
// spent (a dev agent is the server: every read is its work).
type ConsulUse struct {
	Seconds    float64 `json:"seconds,omitempty"`
	Requests   int64   `json:"requests,omitempty"`
	Bytes      int64   `json:"bytes,omitempty"`
	CPUSeconds float64 `json:"cpu_seconds,omitempty"`
}

// NetCPUPerChangeMs is Consul's CPU per change in churn beyond what it
// spends idle (its own timers, Raft, the watches' timeouts), in ms: the
// agent's background work is of the same order as a change's.
func (r Result) NetCPUPerChangeMs() (float64, bool) {
	if r.ConsulIdle.Seconds == 0 || r.ConsulChurn.Seconds == 0 || r.Changes == 0 {
		return 0, false
	}
	net := r.ConsulChurn.CPUSeconds - r.ConsulIdle.PerSecond(r.ConsulIdle.CPUSeconds)*r.ConsulChurn.Seconds
	return 1000 * net / float64(r.Changes), true
}

// PerSecond scales a count of the window to one second.
func (u ConsulUse) PerSecond(v float64) float64 {
	if u.Seconds == 0 {
		return 0
	}
	return v / u.Seconds
}

// consulCounter counts what Consul answered: the proxy in front of it, or
// a client's own transport.
type consulCounter interface {
	Requests() int64
	Bytes() int64
}

// measureConsul runs window and returns Consul's use meanwhile. consul may
// be nil (no CPU then).
func measureConsul(proxy consulCounter, consul *harness.Consul, window func() error) (ConsulUse, error) {
	reqs0, bytes0 := proxy.Requests(), proxy.Bytes()
	var cpu0 time.Duration
	if consul != nil {
		cpu0, _ = CPU(consul.PID())
	}
	start := time.Now()
	if err := window(); err != nil {
		return ConsulUse{}, err
	}
	u := ConsulUse{Seconds: time.Since(start).Seconds(), Requests: proxy.Requests() - reqs0, Bytes: proxy.Bytes() - bytes0}
	if consul != nil {
		cpu1, err := CPU(consul.PID())
		if err != nil {
			return u, err
		}
		u.CPUSeconds = (cpu1 - cpu0).Seconds()
	}
	return u, nil
}
