package consul

// args.go owns the registry's settings: flags, Consul's environment
// variables, validation, and their expansion into one registry per Consul
// cluster and datacenter.

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"istio.io/istio/pkg/cluster"
)

// Args are the registry's settings. Each has a command-line flag; where Consul
// defines a standard environment variable (CONSUL_HTTP_ADDR, ...), it is used
// when the flag is not set, so istiod reads Consul settings the way the consul
// CLI does.
type Args struct {
	// ServerURL is the Consul HTTP API address, e.g. http://127.0.0.1:8500;
	// a comma-separated list ([name=]url,...) watches several Consul clusters,
	// each as its own registry.
	ServerURL string
	// Datacenter to read, or a comma-separated list; the first is the local
	// one (short hostnames). Empty means the agent's own.
	Datacenter string
	// DatacenterFailover also serves every other datacenter's instances
	// under the first one's hostnames, each with its datacenter as
	// locality region, so locality load balancing fails over between them.
	DatacenterFailover bool
	// EnterpriseNamespace and Partition scope every request (Consul Enterprise).
	EnterpriseNamespace, Partition string
	// Consistency is "stale" (default), "default" or "consistent".
	Consistency string
	// MaxStale bounds a stale read: a server that has not heard from the
	// leader for longer hands the read to the leader (Consul's max_stale).
	MaxStale time.Duration
	// MaxConcurrentRequests bounds in-flight per-service fetches.
	MaxConcurrentRequests int
	// MaxConnections bounds the TCP connections to Consul (its
	// http_max_conns_per_client counts them per client IP, 200 by default).
	MaxConnections int
	// Watch is how changes are found: "services" (one blocking query per
	// service, while they fit MaxConnections; else the catalog-wide watches)
	// or "catalog" (the catalog-wide watches always).
	Watch string
	// WaitTime is the blocking-query wait of the catalog-wide watches;
	// ServiceWaitTime that of each service's own (0: WaitTime over
	// HTTP/1.1, 5 minutes over HTTP/2, servicewatch.go).
	WaitTime, ServiceWaitTime time.Duration
	// RequestTimeout bounds every request that does not block (and the
	// time a blocking one may take beyond its wait).
	RequestTimeout time.Duration
	// SyncTimeout bounds how long an unreachable Consul can hold istiod's
	// readiness: the first sync is given up after this long without
	// progress (no service of the first listing read). 0 never gives up.
	SyncTimeout time.Duration
	// Auth is how the registry proves itself to Consul and verifies it.
	Auth Auth
	// Mapping is how Consul services become Istio services.
	Mapping Mapping
}

// Auth holds the ACL token and TLS settings for Consul.
type Auth struct {
	// Token is an ACL token. Printed redacted.
	Token secret
	// TokenFile holds an ACL token; it is re-read when it changes (rotation).
	TokenFile string
	// CAFile, CertFile, KeyFile and TLSServerName configure HTTPS to Consul.
	CAFile, CertFile, KeyFile, TLSServerName string
	// TLSSkipVerify disables certificate verification (testing only).
	TLSSkipVerify bool
}

// Mapping holds the settings of the Consul-to-Istio mapping (docs/mapping.md).
type Mapping struct {
	// Domain is the DNS domain of Consul hostnames: <service>.service.<Domain>.
	Domain string
	// Namespace is the Istio namespace Consul services are placed in.
	Namespace string
	// IncludeWarning also routes to instances whose checks are warning.
	IncludeWarning bool
	// SendUnhealthy sends critical / maintenance instances as UNHEALTHY
	// endpoints instead of dropping them (for outlier-detection setups).
	SendUnhealthy bool
	// DefaultProtocol is the port protocol when nothing else names one.
	DefaultProtocol string
	// DefaultServiceAccount is the workload identity for instances that name none.
	DefaultServiceAccount string
	// DefaultServicePort is the service port of instances without meta
	// "service-port" (each then reached there, on its own port); 0 makes
	// each registered port a service port of its own.
	DefaultServicePort int
	// VIPRange is the CIDR service VIPs are allocated from.
	VIPRange string
}

// The values of --consulWatch.
const (
	watchServices = "services"
	watchCatalog  = "catalog"
)

// DefaultArgs are the documented defaults (docs/configuration.md).
func DefaultArgs() Args {
	return Args{
		Consistency: "stale",
		MaxStale:    5 * time.Second,
		// The initial sync waits on Consul's round trips more than on
		// either side's CPU: 32 reads in flight keep 10,000 services under
		// 10 s on 2 cores (README, Performance), far below Consul's 200
		// connections per client.
		MaxConcurrentRequests: 32,
		// Half of Consul's default http_max_conns_per_client (200): room
		// for a second replica or other clients behind the same address.
		MaxConnections: 100,
		Watch:          watchServices,
		// A blocking query held by a server that stopped answering (SIGSTOP,
		// a wedged load balancer: TCP keepalives still pass) is noticed only
		// when its wait ends; a minute bounds that for 2 requests a minute.
		WaitTime:       time.Minute,
		RequestTimeout: 10 * time.Second,
		SyncTimeout:    30 * time.Second,
		Mapping: Mapping{
			Domain:          "consul",
			Namespace:       "consul",
			DefaultProtocol: "tcp",
			VIPRange:        "240.241.0.0/16",
		},
	}
}

// AddFlags registers the registry's flags on fs, with DefaultArgs as defaults.
func AddFlags(fs *pflag.FlagSet, a *Args) {
	*a = DefaultArgs()
	fs.StringVar(&a.ServerURL, "consulServerURL", "",
		"URL of the Consul HTTP API (env CONSUL_HTTP_ADDR; default http://127.0.0.1:8500); "+
			"a comma-separated list [name=]url,... watches several Consul clusters, each its own registry")
	// The pre-1.8 spelling, so manifests written for Istio's old adapter keep working.
	fs.StringVar(&a.ServerURL, "consulserverURL", "", "Deprecated spelling of --consulServerURL")
	_ = fs.MarkHidden("consulserverURL")
	fs.Var(&a.Auth.Token, "consulToken", "Consul ACL token (env CONSUL_HTTP_TOKEN); prefer --consulTokenFile")
	fs.StringVar(&a.Auth.TokenFile, "consulTokenFile", "",
		"File holding the Consul ACL token, re-read when it changes (env CONSUL_HTTP_TOKEN_FILE)")
	fs.StringVar(&a.Auth.CAFile, "consulCACert", "", "CA bundle to verify Consul's HTTPS certificate (env CONSUL_CACERT)")
	fs.StringVar(&a.Auth.CertFile, "consulClientCert", "", "Client certificate for Consul mTLS (env CONSUL_CLIENT_CERT)")
	fs.StringVar(&a.Auth.KeyFile, "consulClientKey", "", "Client key for Consul mTLS (env CONSUL_CLIENT_KEY)")
	fs.StringVar(&a.Auth.TLSServerName, "consulTLSServerName", "",
		"Server name to verify Consul's certificate against (env CONSUL_TLS_SERVER_NAME)")
	fs.BoolVar(&a.Auth.TLSSkipVerify, "consulTLSSkipVerify", false,
		"Do not verify Consul's certificate; testing only (env CONSUL_HTTP_SSL_VERIFY=false)")
	fs.StringVar(&a.Datacenter, "consulDatacenter", "",
		"Consul datacenter(s) to read, comma-separated; the first keeps short hostnames, others get "+
			"<service>.service.<dc>.<domain>. Default: the agent's own")
	fs.BoolVar(&a.DatacenterFailover, "consulDatacenterFailover", false,
		"Also serve the instances of every other --consulDatacenter under the first one's hostnames (<service>.service.<domain>), "+
			"each with its datacenter as locality region: a DestinationRule's localityLbSetting then fails over between datacenters")
	fs.StringVar(&a.EnterpriseNamespace, "consulEnterpriseNamespace", "",
		"Consul Enterprise namespace to read (env CONSUL_NAMESPACE)")
	fs.StringVar(&a.Partition, "consulPartition", "", "Consul Enterprise admin partition to read (env CONSUL_PARTITION)")
	fs.StringVar(&a.Consistency, "consulConsistency", a.Consistency,
		"Consul read consistency: stale (any server answers), default (leader), consistent")
	fs.DurationVar(&a.MaxStale, "consulMaxStale", a.MaxStale,
		"With stale reads, a server out of contact with the leader for longer hands the read to the leader (Consul's max_stale)")
	fs.StringVar(&a.Mapping.Domain, "consulDomain", a.Mapping.Domain, "Domain of Consul hostnames: <service>.service.<domain>")
	fs.StringVar(&a.Mapping.Namespace, "consulNamespace", a.Mapping.Namespace, "Istio namespace that Consul services are placed in")
	fs.BoolVar(&a.Mapping.IncludeWarning, "consulIncludeWarning", false, "Also route to instances whose checks are warning")
	fs.BoolVar(&a.Mapping.SendUnhealthy, "consulSendUnhealthy", false,
		"Send critical and maintenance instances as UNHEALTHY endpoints instead of dropping them")
	fs.StringVar(&a.Mapping.DefaultProtocol, "consulDefaultProtocol", a.Mapping.DefaultProtocol,
		"Port protocol of Consul services that name none (meta \"protocol\" or a protocol-prefixed service name)")
	fs.StringVar(&a.Mapping.DefaultServiceAccount, "consulDefaultServiceAccount", "",
		"Service account of Consul instances without meta \"service-account\"; empty means no identity")
	fs.IntVar(&a.Mapping.DefaultServicePort, "consulDefaultServicePort", 0,
		"Service port of Consul instances without meta \"service-port\": clients reach every instance there, each on its own registered port (Nomad's dynamic ports); 0: each registered port is a service port")
	fs.StringVar(&a.Mapping.VIPRange, "consulVIPRange", a.Mapping.VIPRange, "CIDR that Consul service VIPs are allocated from")
	fs.IntVar(&a.MaxConcurrentRequests, "consulMaxConcurrentRequests", a.MaxConcurrentRequests,
		"Most concurrent per-service reads that do not block (the first sync, re-reads)")
	fs.IntVar(&a.MaxConnections, "consulMaxConnections", a.MaxConnections,
		"Most TCP connections to Consul; keep it below Consul's limits.http_max_conns_per_client (200 by default) divided by the istiods sharing one client address")
	fs.StringVar(&a.Watch, "consulWatch", a.Watch,
		"How changes are found: services (one blocking query per service: over HTTPS, HTTP/2 carries 250 per connection; "+
			"over plain HTTP each needs a connection, so above --consulMaxConnections the catalog-wide watches are used, with a warning) or catalog")
	fs.DurationVar(&a.WaitTime, "consulWaitTime", a.WaitTime, "Blocking-query wait time of the catalog-wide watches")
	fs.DurationVar(&a.ServiceWaitTime, "consulServiceWaitTime", a.ServiceWaitTime,
		"Blocking-query wait time of each service's watch; 0: --consulWaitTime over plain HTTP, 5m over HTTP/2 (Consul caps it at its max_query_time, 10 minutes by default)")
	fs.DurationVar(&a.RequestTimeout, "consulRequestTimeout", a.RequestTimeout,
		"Deadline of a Consul request that does not block; a blocking one gets its wait time plus this")
	fs.DurationVar(&a.SyncTimeout, "consulSyncTimeout", a.SyncTimeout,
		"How long the first sync may go without progress (no service read) before istiod reports ready without it; "+
			"0: never, istiod stays unready until Consul's catalog is read (as PILOT_REMOTE_CLUSTER_TIMEOUT=0 for remote clusters)")
}

// Complete fills unset settings from Consul's standard environment variables
// and validates the result.
func (a *Args) Complete(getenv func(string) string) error {
	if getenv == nil {
		getenv = os.Getenv
	}
	fromEnv := func(v *string, key string) {
		if *v == "" {
			*v = getenv(key)
		}
	}
	fromEnv(&a.ServerURL, "CONSUL_HTTP_ADDR")
	fromEnv((*string)(&a.Auth.Token), "CONSUL_HTTP_TOKEN")
	fromEnv(&a.Auth.TokenFile, "CONSUL_HTTP_TOKEN_FILE")
	fromEnv(&a.Auth.CAFile, "CONSUL_CACERT")
	fromEnv(&a.Auth.CertFile, "CONSUL_CLIENT_CERT")
	fromEnv(&a.Auth.KeyFile, "CONSUL_CLIENT_KEY")
	fromEnv(&a.Auth.TLSServerName, "CONSUL_TLS_SERVER_NAME")
	if strings.EqualFold(getenv("CONSUL_HTTP_SSL_VERIFY"), "false") {
		a.Auth.TLSSkipVerify = true
	}
	fromEnv(&a.EnterpriseNamespace, "CONSUL_NAMESPACE")
	fromEnv(&a.Partition, "CONSUL_PARTITION")
	if a.ServerURL == "" {
		a.ServerURL = "http://127.0.0.1:8500"
	}
	scheme := "http"
	if strings.EqualFold(getenv("CONSUL_HTTP_SSL"), "true") {
		scheme = "https"
	}
	servers, err := serverURLs(a.ServerURL, scheme)
	if err != nil {
		return err
	}
	urls := make([]string, len(servers))
	for i, s := range servers {
		urls[i] = s.url
		if s.name != "" {
			urls[i] = s.name + "=" + s.url
		}
	}
	a.ServerURL = strings.Join(urls, ",")
	switch a.Consistency {
	case "stale", "default", "consistent":
	default:
		return fmt.Errorf("--consulConsistency=%q: want stale, default or consistent", a.Consistency)
	}
	if p := a.Mapping.DefaultServicePort; p < 0 || p > 65535 {
		return fmt.Errorf("--consulDefaultServicePort=%d: want 1-65535, or 0 for each registered port", p)
	}
	if _, err := netip.ParsePrefix(a.Mapping.VIPRange); err != nil {
		return fmt.Errorf("--consulVIPRange: %w", err)
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"consulWaitTime", a.WaitTime}, {"consulRequestTimeout", a.RequestTimeout}} {
		if d.v <= 0 {
			return fmt.Errorf("--%s=%v: want a positive duration", d.flag, d.v)
		}
	}
	if a.ServiceWaitTime < 0 {
		return fmt.Errorf("--consulServiceWaitTime=%v: want 0 (the default) or a positive duration", a.ServiceWaitTime)
	}
	if a.SyncTimeout < 0 {
		return fmt.Errorf("--consulSyncTimeout=%v: want 0 (never give up) or a positive duration", a.SyncTimeout)
	}
	if a.MaxStale < 0 {
		return fmt.Errorf("--consulMaxStale=%v: want 0 (no bound) or more", a.MaxStale)
	}
	if a.MaxConcurrentRequests < 1 {
		return fmt.Errorf("--consulMaxConcurrentRequests=%d: want at least 1", a.MaxConcurrentRequests)
	}
	if a.MaxConnections < a.MaxConcurrentRequests+watches {
		return fmt.Errorf("--consulMaxConnections=%d: want at least --consulMaxConcurrentRequests + %d (%d)",
			a.MaxConnections, watches, a.MaxConcurrentRequests+watches)
	}
	switch a.Watch {
	case watchServices, watchCatalog:
	default:
		return fmt.Errorf("--consulWatch=%q: want %s or %s", a.Watch, watchServices, watchCatalog)
	}
	if a.DatacenterFailover && len(a.datacenters()) < 2 {
		return fmt.Errorf("--consulDatacenterFailover needs two or more datacenters in --consulDatacenter (%q)", a.Datacenter)
	}
	if (a.Auth.CertFile == "") != (a.Auth.KeyFile == "") {
		return fmt.Errorf("--consulClientCert and --consulClientKey must be set together")
	}
	return nil
}

// datacenters are the --consulDatacenter entries, the local one first.
func (a *Args) datacenters() []string {
	var dcs []string
	for _, dc := range strings.Split(a.Datacenter, ",") {
		if dc = strings.TrimSpace(dc); dc != "" {
			dcs = append(dcs, dc)
		}
	}
	return dcs
}

// serverURL is one --consulServerURL entry: [name=]url.
type serverURL struct{ name, url string }

// serverURLs parses a --consulServerURL list; an address without a scheme
// gets scheme.
func serverURLs(list, scheme string) ([]serverURL, error) {
	var out []serverURL
	for _, entry := range strings.Split(list, ",") {
		entry = strings.TrimSpace(entry)
		s := serverURL{url: entry}
		if n, u, ok := strings.Cut(entry, "="); ok && !strings.ContainsAny(n, ":/") {
			s = serverURL{name: n, url: strings.TrimSpace(u)}
		}
		if s.url == "" {
			return nil, fmt.Errorf("--consulServerURL=%q: empty address", list)
		}
		if !strings.Contains(s.url, "://") {
			s.url = scheme + "://" + s.url
		}
		out = append(out, s)
	}
	return out, nil
}

// secret is a string flag value that never prints itself, in any form:
// istiod logs every flag at start-up ("FLAG: --x=...") and dumps its args as
// YAML (through JSON), and ACL tokens must reach neither.
type secret string

const redacted = "<redacted>"

func (s secret) String() string {
	if s == "" {
		return ""
	}
	return redacted
}

// GoString covers %#v.
func (s secret) GoString() string { return s.String() }

// MarshalJSON covers JSON and YAML dumps of Args.
func (s secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// Set implements pflag.Value.
func (s *secret) Set(v string) error { *s = secret(v); return nil }

// Type implements pflag.Value.
func (s secret) Type() string { return "string" }

// target is one registry to run: a Consul cluster's endpoint and one of its
// datacenters. Each has its own cluster ID and so its own endpoint shard: an
// outage of one never touches the endpoints of another.
type target struct {
	clusterID  cluster.ID
	url        string
	datacenter string // "" = the agent's own
	local      bool   // hostnames without the datacenter
}

// targets expands completed Args: every --consulServerURL entry × every
// --consulDatacenter entry. IDs: "consul" for the first endpoint, its name
// ("name=url") or "consul-<n>" for others; "-<dc>" for non-local datacenters.
func (a *Args) targets() []target {
	dcs := a.datacenters()
	if len(dcs) == 0 {
		dcs = []string{""}
	}
	servers, _ := serverURLs(a.ServerURL, "http") // validated by Complete
	var out []target
	for i, s := range servers {
		name, url := s.name, s.url
		if name == "" {
			name = "consul"
			if i > 0 {
				name += "-" + strconv.Itoa(i+1)
			}
		}
		for j, dc := range dcs {
			id := name
			if j > 0 {
				id += "-" + dc
			}
			out = append(out, target{clusterID: cluster.ID(id), url: url, datacenter: dc, local: j == 0})
		}
	}
	return out
}
