// Command demo runs the local mesh (real Consul, Kubernetes API and patched
// istiod), registers sample services in Consul and shows them being served
// and routed through xDS, including traffic leaving an instance that turns
// critical. `make demo`; `make demo KEEP=1` leaves the mesh up until Ctrl-C.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

func main() {
	keep := flag.Bool("keep", false, "leave the local mesh running until Ctrl-C")
	flag.Parse()
	env, err := harness.NewProcessEnv("pilot-consul-demo")
	if err != nil {
		fail(err)
	}
	err = run(env, *keep)
	env.Close()
	if err != nil {
		fail(err)
	}
	fmt.Println("\nEverything the demo started is stopped.")
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "demo failed:", err)
	os.Exit(1)
}

func step(s string) { fmt.Printf("==> %s\n", s) }

func run(env *harness.ProcessEnv, keep bool) error {
	m, err := harness.StartMesh(env, step)
	if err != nil {
		return err
	}
	step("registering sample services in Consul (TTL health checks)")
	ips := []string{"127.0.0.21", "127.0.0.22", "127.0.0.23"}
	port, err := harness.FreePortOn(ips...)
	if err != nil {
		return err
	}
	agent := m.Consul.Client.Agent()
	for i, ip := range ips {
		id := fmt.Sprintf("hello-%d", i+1)
		if _, err := harness.StartWorkload(env, id, ip, port); err != nil {
			return err
		}
		if err := agent.ServiceRegister(&api.AgentServiceRegistration{
			ID: id, Name: "hello", Address: ip, Port: port, Tags: []string{fmt.Sprintf("version=v%d", i+1)},
			Meta:  map[string]string{"protocol": "grpc"},
			Check: &api.AgentServiceCheck{CheckID: "ttl-" + id, TTL: "1h", Status: api.HealthPassing},
		}); err != nil {
			return fmt.Errorf("register %s: %w", id, err)
		}
		fmt.Printf("    hello.service.consul instance %s at %s:%d (passing)\n", id, ip, port)
	}
	if err := agent.ServiceRegister(&api.AgentServiceRegistration{ID: "db-1", Name: "db", Address: "127.0.0.31", Port: 5432}); err != nil {
		return err
	}
	fmt.Println("    db.service.consul instance db-1 at 127.0.0.31:5432 (no protocol meta: TCP)")

	target := fmt.Sprintf("hello.service.consul:%d", port)
	cluster := fmt.Sprintf("outbound|%d||hello.service.consul", port)
	step("what istiod now serves from Consul (an ADS client's view)")
	var dump *harness.Dump
	deadline := time.Now().Add(30 * time.Second)
	for {
		dump, err = harness.ADSDump(m.Istiod.XDSAddr, "default", cluster)
		if err == nil && len(harness.EndpointAddrs(dump.Endpoints[cluster])) == 3 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("istiod never served 3 endpoints for %s (last error %v)", cluster, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	showRegistry(m)
	fmt.Printf("    EDS %s -> %v\n", cluster, harness.EndpointAddrs(dump.Endpoints[cluster]))

	step(fmt.Sprintf("proxyless gRPC client calling xds:///%s", target))
	conn, err := m.XDS.Dial(target)
	if err != nil {
		return err
	}
	defer conn.Close()
	show(conn, 30)

	step("marking hello-2 critical in Consul")
	start := time.Now()
	if err := agent.UpdateTTL("ttl-hello-2", "demo: marked critical", api.HealthCritical); err != nil {
		return err
	}
	if err := waitGone(conn, "hello-2"); err != nil {
		return err
	}
	fmt.Printf("    traffic left hello-2 %v after Consul marked it critical\n", time.Since(start).Round(time.Millisecond))
	show(conn, 30)

	step("hello-2 passing again")
	if err := agent.UpdateTTL("ttl-hello-2", "", api.HealthPassing); err != nil {
		return err
	}
	time.Sleep(300 * time.Millisecond)
	show(conn, 30)

	if keep {
		fmt.Printf(`
The local mesh stays up; Ctrl-C stops all of it. Try:
  curl -s http://%[1]s/v1/catalog/services                      # Consul catalog
  curl -s http://%[2]s/debug/registryz | grep -o '"hostname":"[^"]*consul"'   # istiod's services
  curl -s http://%[2]s/debug/endpointShardz | head -c 2000         # endpoints per registry shard
  curl -s http://%[3]s/metrics | grep pilot_consul_                  # registry metrics
  bin/consul services register -http-addr=%[1]s -name=x -address=127.0.0.40 -port=80   # watch it appear
  KUBECONFIG=%[4]s kubectl get crd | head                           # the Kubernetes API
Logs of every component: %[5]s
`, m.Consul.HTTPAddr, m.Istiod.HTTPAddr, m.Istiod.MonitoringAddr, m.Kube.Kubeconfig, env.Root())
		// Ctrl-C reaches the env's handler, which stops everything and exits.
		select {}
	}
	return nil
}

func show(conn *harness.Conn, n int) {
	counts := map[string]int{}
	for range n {
		who, err := conn.Call(5 * time.Second)
		if err != nil {
			who = "error: " + err.Error()
		}
		counts[who]++
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, counts[k]))
	}
	fmt.Printf("    %d calls answered by: %s\n", n, strings.Join(parts, "  "))
}

func waitGone(conn *harness.Conn, gone string) error {
	streak := 0
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		who, err := conn.Call(5 * time.Second)
		if err != nil {
			return err
		}
		if who == gone {
			streak = 0
		} else if streak++; streak == 20 {
			return nil
		}
	}
	return fmt.Errorf("calls still reach %s after 30s", gone)
}

func showRegistry(m *harness.Mesh) {
	b, err := m.Istiod.Debug("/debug/registryz")
	if err != nil {
		return
	}
	var svcs []struct {
		Hostname string `json:"hostname"`
		Address  string `json:"defaultAddress"`
		Ports    []struct {
			Name     string `json:"name"`
			Port     int    `json:"port"`
			Protocol string `json:"protocol"`
		} `json:"ports"`
		Attributes struct {
			ServiceRegistry string
		}
	}
	if json.Unmarshal(b, &svcs) != nil {
		return
	}
	for _, s := range svcs {
		if s.Attributes.ServiceRegistry != "Consul" {
			continue
		}
		var ports []string
		for _, p := range s.Ports {
			ports = append(ports, fmt.Sprintf("%d/%s", p.Port, p.Protocol))
		}
		fmt.Printf("    service %-26s VIP %-15s ports %s\n", s.Hostname, s.Address, strings.Join(ports, ","))
	}
}
