// Command e2e-echo is the workload image of the kind suite (tests/e2e/kind):
//
//	e2e-echo serve -name ID [-port 8080] [-xds]
//	                                        gRPC server answering with ID; with
//	                                        -xds, a proxyless server in the mesh
//	e2e-echo client                         "<timeout> <host:port>" lines on
//	                                        stdin, one call each, results on stdout
//	e2e-echo sleep                          idle (a pod to exec the client in)
//	e2e-echo wds -service NS/HOST [-istio-version V] [-xds ADDR]
//	                                        subscribe to istiod's WDS as ztunnel
//	                                        does; a JSON line (WDSView) each
//	                                        time the service changes
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/pilot-consul/pilot-consul/tests/e2e/echo"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "serve":
		fs := flag.NewFlagSet("serve", flag.ExitOnError)
		name := fs.String("name", "", "name to answer with (the Consul instance ID)")
		port := fs.Int("port", 8080, "port to listen on")
		withXDS := fs.Bool("xds", false, "serve as a proxyless gRPC server: TLS and authorization from istiod")
		_ = fs.Parse(os.Args[2:])
		if *name == "" {
			usage()
		}
		l, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(*port)))
		if err != nil {
			fail(err)
		}
		if *withXDS {
			srv, err := echo.ServeXDS(l, *name)
			if err != nil {
				fail(err)
			}
			waitForSignal()
			srv.Stop()
			return
		}
		srv := echo.Serve(l, *name)
		waitForSignal()
		srv.Stop()
	case "client":
		if err := echo.ClientLoop(os.Stdin, os.Stdout); err != nil {
			fail(err)
		}
	case "sleep":
		waitForSignal()
	case "wds":
		if err := wds(os.Args[2:]); err != nil {
			fail(err)
		}
	default:
		usage()
	}
}

func waitForSignal() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: e2e-echo serve -name ID [-port 8080] [-xds] | client | sleep | wds -service NS/HOST")
	os.Exit(2)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "e2e-echo:", err)
	os.Exit(1)
}
