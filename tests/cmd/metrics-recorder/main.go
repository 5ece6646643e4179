// Command metrics-recorder runs the patched istiod against two real Consul
// agents (registries "east" and "west") through a few minutes of what the
// dashboard exists to show — health flips, a registration Consul's data
// makes unroutable, a Connect proxy, west's Consul dying and coming back
// empty, then repopulated — and records istiod's pilot_consul_* metrics
// every two seconds. tests/plots renders the dashboard from the recording
// (make dashboard-picture), since no Grafana runs here.
package main

import (
	"compress/gzip"
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/pilot-consul/pilot-consul/tests/bench"
	"github.com/pilot-consul/pilot-consul/tests/harness"
)

func main() {
	out := flag.String("out", "docs/dashboard/scrapes.txt.gz", "where the recording is written")
	flag.Parse()
	env, err := harness.NewProcessEnv("pilot-consul-metrics-recorder")
	if err != nil {
		fail(err)
	}
	err = record(env, *out)
	env.Close()
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "metrics-recorder:", err)
	os.Exit(1)
}

func step(format string, args ...any) {
	fmt.Printf("%s ==> %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// scrapeEvery is the recording's resolution; the renderer's rate windows
// are a multiple of it.
const scrapeEvery = 2 * time.Second

func record(env *harness.ProcessEnv, out string) error {
	ctx := context.Background()
	east, err := harness.StartConsul(env)
	if err != nil {
		return err
	}
	west, err := harness.StartConsul(env)
	if err != nil {
		return err
	}
	kube, err := harness.StartKube(env)
	if err != nil {
		return err
	}
	eastData := &bench.ConsulSource{Client: east.Client, Data: bench.Dataset{N: 60, M: 4}}
	westData := &bench.ConsulSource{Client: west.Client, Data: bench.Dataset{N: 25, M: 3}}
	if err := eastData.Load(ctx); err != nil {
		return err
	}
	if err := westData.Load(ctx); err != nil {
		return err
	}
	if err := connectProxy(west.Client); err != nil {
		return err
	}
	step("starting istiod with registries east and west")
	istiod, err := harness.StartIstiod(env, kube, "east="+east.URL()+",west="+west.URL(),
		"--log_output_level", "default:warn,consul:warn")
	if err != nil {
		return err
	}

	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	zw := gzip.NewWriter(f)
	scrapes := 0
	scrape := func() error {
		m, err := istiod.Metrics()
		if err != nil {
			return err
		}
		fmt.Fprintf(zw, "# scrape %d\n", time.Now().UnixMilli())
		for _, l := range strings.Split(string(m), "\n") {
			if strings.HasPrefix(l, "pilot_consul_") {
				fmt.Fprintln(zw, l)
			}
		}
		scrapes++
		return nil
	}

	// The scenario, by second from the first scrape.
	events := []struct {
		at   int
		what string
		do   func() error
	}{
		{40, "east: an instance registered with a hostname address (skipped)", func() error { return hostnameInstance(east.Client) }},
		{70, "west: Consul killed", func() error { west.Kill(); return nil }},
		{130, "west: Consul back, empty", func() error { return west.Start() }},
		{150, "west: catalog restored", func() error {
			if err := westData.Load(ctx); err != nil {
				return err
			}
			return connectProxy(west.Client)
		}},
	}
	const length = 210 // seconds
	start := time.Now()
	flips := time.NewTicker(500 * time.Millisecond) // east: two health changes a second
	defer flips.Stop()
	tick := time.NewTicker(scrapeEvery)
	defer tick.Stop()
	if err := scrape(); err != nil {
		return err
	}
	next, flip := 0, 0
	for time.Since(start) < length*time.Second {
		select {
		case <-tick.C:
			if err := scrape(); err != nil {
				return err
			}
		case <-flips.C:
			in := bench.Instance{Svc: flip / 2 % eastData.Data.N, Idx: 0}
			if err := eastData.SetHealthy(ctx, in, flip%2 == 1); err != nil {
				return fmt.Errorf("flip: %w", err)
			}
			flip++
		}
		for next < len(events) && time.Since(start) >= time.Duration(events[next].at)*time.Second {
			step("%s", events[next].what)
			if err := events[next].do(); err != nil {
				return fmt.Errorf("%s: %w", events[next].what, err)
			}
			next++
		}
	}
	if err := zw.Close(); err != nil {
		return err
	}
	step("recorded %d scrapes (%d health flips) into %s", scrapes, flip, out)
	return f.Close()
}

// hostnameInstance registers an instance the registry must skip: Consul
// hostnames are not resolved.
func hostnameInstance(c *api.Client) error {
	_, err := c.Catalog().Register(&api.CatalogRegistration{Node: "legacy-db", Address: "db.example.com",
		Service: &api.AgentService{ID: "svc-00001-legacy", Service: "svc-00001", Port: bench.Port}}, nil)
	return err
}

// connectProxy registers a Connect sidecar proxy: not a workload, skipped
// by design.
func connectProxy(c *api.Client) error {
	_, err := c.Catalog().Register(&api.CatalogRegistration{Node: "bench-node-0", Address: "127.0.0.1",
		Service: &api.AgentService{ID: "svc-00000-sidecar-proxy", Service: "svc-00000-sidecar-proxy", Port: 21000,
			Kind: api.ServiceKindConnectProxy, Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "svc-00000"}}}, nil)
	return err
}
