// Command consul-mcp serves a Consul catalog to an unpatched istiod over
// MCP-over-xDS (meshConfig.configSources: xds://127.0.0.1:15110), read by
// the same registry code, flags and environment variables as the patched
// istiod. docs/mcp.md.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	istiolog "istio.io/istio/pkg/log"
	"istio.io/istio/pkg/monitoring"

	"github.com/pilot-consul/pilot-consul/mcp"
	"github.com/pilot-consul/pilot-consul/pilot/pkg/serviceregistry/consul"
)

// flags are the server's own settings; the registry's are consul.Args.
type flags struct {
	grpcAddr, httpAddr, debugAddr string
	tlsCert, tlsKey, tlsClientCA  string
	tlsClientIdentities           []string
	trustDomain                   string
	inlineEndpoints               bool
	debounce                      mcp.Debounce
	limits                        mcp.Limits
}

func main() {
	fs := pflag.NewFlagSet("consul-mcp", pflag.ExitOnError)
	var args consul.Args
	consul.AddFlags(fs, &args)
	var f flags
	fs.StringVar(&f.grpcAddr, "grpcAddr", "127.0.0.1:15110",
		"MCP-over-xDS (ADS) listen address; beyond loopback it needs --tlsClientCA, since an upstream istiod cannot authenticate itself")
	fs.StringVar(&f.httpAddr, "httpAddr", ":15114", "/healthz, /ready and /metrics (no catalog data)")
	fs.StringVar(&f.debugAddr, "debugAddr", "127.0.0.1:15118", "/debug/mcpz and /debug/consulz (the catalog: keep it on loopback)")
	fs.StringVar(&f.tlsCert, "tlsCert", "", "Serve ADS over TLS with this certificate (PEM); istiod's configSources tlsSettings mode SIMPLE verifies it")
	fs.StringVar(&f.tlsKey, "tlsKey", "", "Key of --tlsCert")
	fs.StringVar(&f.tlsClientCA, "tlsClientCA", "", "Require client certificates signed by this CA bundle (PEM), naming one of --tlsClientIdentities")
	fs.StringSliceVar(&f.tlsClientIdentities, "tlsClientIdentities", nil,
		"With --tlsClientCA, the identities (URI SANs) a client certificate must name, comma-separated; "+
			"default istiod's: spiffe://<trustDomain>/ns/istio-system/sa/istiod (a revision's istiod is sa/istiod-<revision>)")
	fs.StringVar(&f.trustDomain, "trustDomain", "cluster.local", "The mesh's trust domain, for instance identities")
	fs.BoolVar(&f.inlineEndpoints, "inlineEndpoints", false,
		"Send each service's healthy instances inside its ServiceEntry (endpoints) instead of as WorkloadEntries it selects")
	fs.DurationVar(&f.debounce.Quiet, "debounce", 100*time.Millisecond, "Push once Consul has been quiet this long...")
	fs.DurationVar(&f.debounce.Max, "debounceMax", time.Second, "...or this long after the first change, whichever comes first")
	f.limits = mcp.DefaultLimits
	fs.IntVar(&f.limits.StreamsPerPeer, "maxStreamsPerPeer", f.limits.StreamsPerPeer,
		"ADS streams one address may hold open; more are refused (RESOURCE_EXHAUSTED). An istiod holds one, two while it reconnects")
	logOpts := istiolog.DefaultOptions()
	logOpts.AttachFlags(fs.StringArrayVar, fs.StringVar, fs.IntVar, fs.BoolVar)
	_ = fs.Parse(os.Args[1:])
	if err := istiolog.Configure(logOpts); err != nil {
		fmt.Fprintln(os.Stderr, "consul-mcp: log options:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, args, f); err != nil {
		istiolog.Errorf("consul-mcp: %v", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args consul.Args, f flags) error {
	if err := args.Complete(nil); err != nil {
		return fmt.Errorf("consul flags: %w", err)
	}
	if f.limits.StreamsPerPeer < 1 {
		return fmt.Errorf("--maxStreamsPerPeer %d: an istiod needs at least 1", f.limits.StreamsPerPeer)
	}
	creds, err := serverCredentials(f)
	if err != nil {
		return err
	}
	registries, err := consul.NewRegistries(args, consul.Options{
		XDSUpdater:      mcp.NoPushes{},
		TrustDomain:     func() string { return f.trustDomain },
		InlineEndpoints: f.inlineEndpoints,
	})
	if err != nil {
		return err
	}
	var controllers []*consul.Controller
	for _, r := range registries {
		controllers = append(controllers, r.(*consul.Controller))
	}
	srv := mcp.NewServer(func() bool {
		for _, c := range controllers {
			if !c.HasSynced() {
				return false
			}
		}
		return true
	}, f.debounce, f.limits)
	for _, c := range controllers {
		srv.Add(c.AmbientInputs())
	}

	if !loopback(f.grpcAddr) && f.tlsClientCA == "" {
		return fmt.Errorf("--grpcAddr %s is not a loopback address: clients there could read the Consul catalog without an ACL token, "+
			"so --tlsClientCA is required (or run consul-mcp beside istiod, in its pod, on loopback)", f.grpcAddr)
	}
	grpcLis, err := listen(f.grpcAddr, "ADS")
	if err != nil {
		return err
	}
	opts := mcp.GRPCOptions()
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	gs := grpc.NewServer(opts...)
	discovery.RegisterAggregatedDiscoveryServiceServer(gs, srv)

	metrics, err := monitoring.RegisterPrometheusExporter(nil, nil)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	public := http.NewServeMux()
	public.Handle("/metrics", metrics)
	// Answers once the ADS port listens (it does before this server
	// starts): a startup probe, so the kubelet starts istiod after it.
	public.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	public.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !srv.Ready() {
			http.Error(w, "not ready: the first read of every Consul registry has not finished", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	debug := http.NewServeMux()
	debug.HandleFunc("/debug/mcpz", srv.DebugHandler)
	debug.Handle("/debug/consulz", consul.DebugHandler(registries))
	httpLis, err := listen(f.httpAddr, "HTTP")
	if err != nil {
		return err
	}
	debugLis, err := listen(f.debugAddr, "debug")
	if err != nil {
		return err
	}
	if !loopback(f.debugAddr) {
		istiolog.Warnf("consul-mcp: --debugAddr %s is not loopback: /debug/consulz shows the catalog to anyone who reaches it", f.debugAddr)
	}

	stopRegistries := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range controllers {
		wg.Go(func() { c.Run(stopRegistries) })
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Go(func() { srv.Run(runCtx) })
	servers := []*http.Server{{Handler: public, ReadHeaderTimeout: 10 * time.Second}, {Handler: debug, ReadHeaderTimeout: 10 * time.Second}}
	errc := make(chan error, 3)
	go func() { errc <- gs.Serve(grpcLis) }()
	go func() { errc <- servers[0].Serve(httpLis) }()
	go func() { errc <- servers[1].Serve(debugLis) }()
	istiolog.Infof("consul-mcp: serving ADS on %s (TLS %v), /ready and /metrics on %s, debug on %s",
		grpcLis.Addr(), creds != nil, httpLis.Addr(), debugLis.Addr())

	select {
	case <-ctx.Done():
		err = nil
	case err = <-errc:
	}
	gs.Stop()
	for _, s := range servers {
		_ = s.Close()
	}
	cancel()
	close(stopRegistries)
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

func listen(addr, what string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s listener: %w", what, err)
	}
	return l, nil
}

// loopback reports whether a listen address (host:port) binds loopback
// only: "localhost" or a loopback IP; "" and 0.0.0.0 bind every interface.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// serverCredentials is nil for plaintext (loopback), TLS with --tlsCert,
// and mutual TLS with --tlsClientCA.
func serverCredentials(f flags) (credentials.TransportCredentials, error) {
	if f.tlsCert == "" && f.tlsClientCA == "" {
		return nil, nil
	}
	if f.tlsCert == "" || f.tlsKey == "" {
		return nil, fmt.Errorf("--tlsCert and --tlsKey go together (and --tlsClientCA needs them)")
	}
	// Re-read on every handshake, so a rotated certificate is served
	// without a restart.
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		c, err := tls.LoadX509KeyPair(f.tlsCert, f.tlsKey)
		if err != nil {
			return nil, fmt.Errorf("load --tlsCert: %w", err)
		}
		return &c, nil
	}}
	if _, err := tls.LoadX509KeyPair(f.tlsCert, f.tlsKey); err != nil {
		return nil, fmt.Errorf("--tlsCert/--tlsKey: %w", err)
	}
	if f.tlsClientCA != "" {
		pem, err := os.ReadFile(f.tlsClientCA)
		if err != nil {
			return nil, fmt.Errorf("--tlsClientCA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--tlsClientCA %s holds no PEM certificate", f.tlsClientCA)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
		allowed := f.tlsClientIdentities
		if len(allowed) == 0 {
			allowed = []string{"spiffe://" + f.trustDomain + "/ns/istio-system/sa/istiod"}
		}
		// Pointed at the mesh's root, the CA alone would let in every
		// workload of the mesh, each of which could then read the whole
		// Consul catalog: as Istio's own XDS authorization does, only the
		// identities named are accepted.
		cfg.VerifyPeerCertificate = func(_ [][]byte, chains [][]*x509.Certificate) error {
			return identityAllowed(chains, allowed)
		}
	}
	return credentials.NewTLS(cfg), nil
}

// identityAllowed accepts a verified client certificate that names one of
// allowed among its URI SANs.
func identityAllowed(chains [][]*x509.Certificate, allowed []string) error {
	if len(chains) == 0 || len(chains[0]) == 0 {
		return fmt.Errorf("no verified client certificate")
	}
	leaf := chains[0][0]
	var named []string
	for _, u := range leaf.URIs {
		if slices.Contains(allowed, u.String()) {
			return nil
		}
		named = append(named, u.String())
	}
	return fmt.Errorf("client certificate %q names %v, none of the identities allowed (--tlsClientIdentities %v)",
		leaf.Subject.CommonName, named, allowed)
}
