package consul

// tlsfiles.go owns the TLS material for Consul's HTTPS API: the CA, the
// client certificate and its key, read from their files and read again
// when a file changes, so short-lived client certificates (Vault PKI with
// verify_incoming) and a CA rotation need no restart.

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// tlsFiles builds the TLS client configuration from the files of auth and
// rebuilds it, for the next connection, once one of them changes (its
// modification time or size). A change that cannot be loaded (a
// certificate written before its key) keeps the last good configuration,
// and is tried again on the next connection.
type tlsFiles struct {
	settings api.TLSConfig

	mu      sync.Mutex
	stamp   string // the files' modification times and sizes when cfg was built
	cfg     *tls.Config
	lastErr string // the last reload failure, logged once
}

func newTLSFiles(a Auth) (*tlsFiles, error) {
	t := &tlsFiles{settings: api.TLSConfig{
		Address:            a.TLSServerName,
		CAFile:             a.CAFile,
		CertFile:           a.CertFile,
		KeyFile:            a.KeyFile,
		InsecureSkipVerify: a.TLSSkipVerify,
	}}
	if _, err := t.config(); err != nil {
		return nil, err
	}
	return t, nil
}

// config returns the configuration for a new connection.
func (t *tlsFiles) config() (*tls.Config, error) {
	stamp := t.filesStamp()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cfg != nil && stamp == t.stamp {
		return t.cfg, nil
	}
	cfg, err := api.SetupTLSConfig(&t.settings)
	if err != nil {
		err = fmt.Errorf("consul TLS settings: %w", err)
		if t.cfg == nil {
			return nil, err
		}
		if err.Error() != t.lastErr {
			t.lastErr = err.Error()
			log.Warnf("%v; connecting with the certificates loaded before", err)
		}
		return t.cfg, nil
	}
	if t.cfg != nil {
		log.Infof("consul TLS files changed (%s, %s, %s); new connections use them", t.settings.CAFile,
			t.settings.CertFile, t.settings.KeyFile)
	}
	// HTTP/2 where Consul offers it (its HTTPS listener does), which
	// net/http then uses on the connection (ForceAttemptHTTP2).
	cfg.NextProtos = []string{"h2", "http/1.1"}
	t.cfg, t.stamp, t.lastErr = cfg, stamp, ""
	return cfg, nil
}

// filesStamp identifies the files' current contents cheaply.
func (t *tlsFiles) filesStamp() string {
	var stamp string
	for _, f := range []string{t.settings.CAFile, t.settings.CertFile, t.settings.KeyFile} {
		if f == "" {
			continue
		}
		if st, err := os.Stat(f); err == nil {
			stamp += fmt.Sprintf("%s:%d:%d;", f, st.ModTime().UnixNano(), st.Size())
		} else {
			stamp += f + ":missing;"
		}
	}
	return stamp
}

// dialTLS opens a TLS connection with the current material.
func (t *tlsFiles) dialTLS(dial func(ctx context.Context, network, addr string) (net.Conn, error), handshake time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		cfg, err := t.config()
		if err != nil {
			return nil, err
		}
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if cfg.ServerName == "" {
			// What net/http does without a dialer of its own.
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				host = addr
			}
			cfg = cfg.Clone()
			cfg.ServerName = host
		}
		hctx, cancel := context.WithTimeout(ctx, handshake)
		defer cancel()
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(hctx); err != nil {
			conn.Close()
			return nil, err
		}
		return tc, nil
	}
}

// explain says why HTTP/2 could not use a new connection. Under TLS 1.3 a
// server that refuses the client's certificate (none, or one it does not
// trust) says so after the handshake, in an alert that net/http's HTTP/2
// client drops ("client conn could not be established"). One more
// connection, over HTTP/1.1, reads it; nil if the server says nothing.
func (t *tlsFiles) explain(ctx context.Context, dial func(ctx context.Context, network, addr string) (net.Conn, error), addr string) error {
	cfg, err := t.config()
	if err != nil {
		return err
	}
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"http/1.1"}
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		cfg.ServerName = host
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := dial(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return err
	}
	_ = tc.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := tc.Read(make([]byte, 1)); err != nil && !os.IsTimeout(err) {
		return err
	}
	return nil
}
