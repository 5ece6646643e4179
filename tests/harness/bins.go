// Package harness starts the real components of a local mesh (Consul,
// etcd + kube-apiserver, the patched istiod) on free loopback ports for tests
// and the demo, and stops them again: whoever starts a server stops it.
package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// Root is the repository root (the directory holding VERSION and go.mod).
func Root() string {
	rootOnce.Do(func() {
		dir, err := os.Getwd()
		for err == nil {
			if _, e := os.Stat(filepath.Join(dir, "VERSION")); e == nil {
				if _, e := os.Stat(filepath.Join(dir, "go.mod")); e == nil {
					rootDir = dir
					return
				}
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
		panic("harness: cannot find the pilot-consul repository root above the working directory")
	})
	return rootDir
}

var (
	rootOnce sync.Once
	rootDir  string
	buildMu  sync.Mutex
)

// Binary finds a tool: the override env var first (CONSUL_BIN, ...), then
// bin/ or out/ in the repo; a missing tool is built by the project's own
// scripts, never skipped.
func Binary(name string) (string, error) {
	env := strings.ToUpper(strings.ReplaceAll(name, "-", "_")) + "_BIN"
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", env, p, err)
		}
		return p, nil
	}
	var path string
	var build []string
	switch name {
	case "consul", "kube-apiserver", "kind", "promtool", "helm":
		path = filepath.Join(Root(), "bin", name)
		build = []string{"build/tools.sh", name}
	case "pilot-discovery", "consul-mcp":
		path = filepath.Join(OutDir(), name)
		build = []string{"build/build.sh"}
	case "upstream-pilot-discovery": // the release as shipped (make build-upstream)
		path = filepath.Join(OutDir()+"-upstream", "pilot-discovery")
		build = []string{"build/build-upstream.sh"}
	case "etcd":
		if p, err := exec.LookPath("etcd"); err == nil {
			return p, nil
		}
		path = "/usr/bin/etcd"
		build = []string{"build/tools.sh", "etcd"}
	default:
		return "", fmt.Errorf("unknown tool %q", name)
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	cmd := exec.Command(build[0], build[1:]...)
	cmd.Dir = Root()
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s is missing and %s failed: %w (build it with 'make tools build')",
			name, strings.Join(build, " "), err)
	}
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("%s still missing after %s", path, strings.Join(build, " "))
	}
	return path, nil
}
