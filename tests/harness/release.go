package harness

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// IstioRelease is the Istio release under test: $ISTIO as make passes it,
// else VERSION's ISTIO_DEFAULT, the same choice build/lib.sh makes.
func IstioRelease() string {
	if r := os.Getenv("ISTIO"); r != "" {
		return r
	}
	releaseOnce.Do(func() {
		f, err := os.Open(filepath.Join(Root(), "VERSION"))
		if err != nil {
			panic("harness: " + err.Error())
		}
		defer f.Close()
		s := bufio.NewScanner(f)
		for s.Scan() {
			if v, ok := strings.CutPrefix(s.Text(), "ISTIO_DEFAULT="); ok {
				defaultRelease = strings.TrimSpace(v)
			}
		}
		if defaultRelease == "" {
			panic("harness: VERSION has no ISTIO_DEFAULT")
		}
	})
	return defaultRelease
}

// IstioTree is the patched Istio work tree of the release under test
// (build/build.sh makes it).
func IstioTree() string {
	return filepath.Join(Root(), "_work", IstioRelease(), "istio")
}

// OutDir holds the release's binaries (build/build.sh, build/manifests.sh).
func OutDir() string {
	return filepath.Join(Root(), "out", IstioRelease())
}

var (
	releaseOnce    sync.Once
	defaultRelease string
)
