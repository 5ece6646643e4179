// Package echo is the gRPC workload of the end-to-end cases: a server that
// answers every call with its own name, and a line-oriented client loop that
// a test drives over a pipe (kubectl exec into a pod with a sidecar).
package echo

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/xds" // also registers the xds:/// resolver and its balancers
)

type server struct {
	testgrpc.UnimplementedTestServiceServer
	name string
}

func (s *server) UnaryCall(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{Hostname: s.name}, nil
}

// Serve answers every UnaryCall on l with name until the server is stopped.
func Serve(l net.Listener, name string) *grpc.Server {
	srv := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(srv, &server{name: name})
	go func() { _ = srv.Serve(l) }()
	return srv
}

// ServeXDS is Serve for a proxyless gRPC server in the mesh: istiod's inbound
// listener for the port (through the pod's agent, GRPC_XDS_BOOTSTRAP) sets
// its TLS (PeerAuthentication) and authorization (AuthorizationPolicy).
func ServeXDS(l net.Listener, name string) (*xds.GRPCServer, error) {
	creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		return nil, err
	}
	srv, err := xds.NewGRPCServer(grpc.Creds(creds))
	if err != nil {
		return nil, err
	}
	testgrpc.RegisterTestServiceServer(srv, &server{name: name})
	go func() { _ = srv.Serve(l) }()
	return srv, nil
}

// Call makes one call on cc and returns the name of the server that answered.
func Call(cc *grpc.ClientConn, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	resp, err := testgrpc.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.WaitForReady(true))
	if err != nil {
		return "", err
	}
	return resp.GetHostname(), nil
}

// ClientLoop reads requests "<timeout> <host:port>" line by line from in,
// makes one gRPC call per line through the mesh, and writes "ok <server>" or
// "err <message>" per line to out. A channel per target is kept, as a real
// client would. In a proxyless gRPC pod (GRPC_XDS_BOOTSTRAP set by the
// grpc-agent injection) calls resolve through xds:/// with the mesh's TLS
// settings; otherwise they go by DNS through the pod's Envoy sidecar.
func ClientLoop(in io.Reader, out io.Writer) error {
	conns := map[string]*grpc.ClientConn{}
	defer func() {
		for _, cc := range conns {
			_ = cc.Close()
		}
	}()
	sc := bufio.NewScanner(in)
	w := bufio.NewWriter(out)
	for sc.Scan() {
		reply := "err bad request, want \"<timeout> <host:port>\""
		if f := strings.Fields(sc.Text()); len(f) == 2 {
			if timeout, err := time.ParseDuration(f[0]); err == nil {
				reply = callLine(conns, f[1], timeout)
			}
		}
		if _, err := fmt.Fprintln(w, reply); err != nil {
			return err
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
	return sc.Err()
}

func callLine(conns map[string]*grpc.ClientConn, target string, timeout time.Duration) string {
	cc, ok := conns[target]
	if !ok {
		var err error
		if cc, err = dialMesh(target); err != nil {
			return "err " + oneLine(err)
		}
		conns[target] = cc
	}
	who, err := Call(cc, timeout)
	if err != nil {
		return "err " + oneLine(err)
	}
	return "ok " + who
}

func dialMesh(target string) (*grpc.ClientConn, error) {
	if os.Getenv("GRPC_XDS_BOOTSTRAP") != "" {
		// Plaintext unless istiod's cluster config asks for mTLS.
		creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
		if err != nil {
			return nil, err
		}
		return grpc.NewClient("xds:///"+target, grpc.WithTransportCredentials(creds))
	}
	// dns:/// resolves <svc>.service.consul through the sidecar's DNS proxy
	// to the registry's VIP; the sidecar routes the call.
	return grpc.NewClient("dns:///"+target, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", " ") }
