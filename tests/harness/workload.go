package harness

import (
	"fmt"
	"net"
	"strconv"

	"google.golang.org/grpc"

	"github.com/pilot-consul/pilot-consul/tests/e2e/echo"
)

// Workload is a small gRPC server (tests/e2e/echo) that answers every
// UnaryCall with its own instance name, so a client can count which instance
// served it.
type Workload struct {
	Name string
	IP   string
	Port int
	srv  *grpc.Server
}

// StartWorkload serves on ip:port (port 0 picks one); stopped at cleanup.
func StartWorkload(env Env, name, ip string, port int) (*Workload, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("workload %s: listen: %w", name, err)
	}
	w := &Workload{Name: name, IP: ip, Port: l.Addr().(*net.TCPAddr).Port, srv: echo.Serve(l, name)}
	env.Cleanup(w.srv.Stop)
	return w, nil
}

// FreePortOn returns a port free on every one of the given loopback IPs, so
// instances of one service can share a port on different addresses.
func FreePortOn(ips ...string) (int, error) {
	for range 50 {
		ports, err := FreePorts(1)
		if err != nil {
			return 0, err
		}
		ok := true
		var ls []net.Listener
		for _, ip := range ips {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(ports[0])))
			if err != nil {
				ok = false
				break
			}
			ls = append(ls, l)
		}
		for _, l := range ls {
			l.Close()
		}
		if ok {
			return ports[0], nil
		}
	}
	return 0, fmt.Errorf("no port free on all of %v", ips)
}
