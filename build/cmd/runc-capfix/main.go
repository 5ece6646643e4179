// Command runc-capfix is an OCI runtime that runs runc on machines whose
// capability bounding set lacks CAP_SYS_RESOURCE, as sandboxed build machines
// (containers themselves) often do. There, runc refuses every container that
// asks for a capability it cannot hold ("unable to apply caps: operation not
// permitted"), and a --privileged container or pod asks for all of them.
//
// It edits what runc is about to apply, then execs runc with the same
// arguments: CAP_SYS_RESOURCE leaves every capability set of the bundle's
// config.json (create, run) or of the --process file (exec), and a negative
// oomScoreAdj is raised to runc-capfix's own (lowering it needs the same
// capability; kubelet asks -998 for every pod sandbox). Where the bounding set
// has the capability, it changes nothing. dockerd registers it with
// --add-runtime; the kind node's containerd names it as runc's BinaryName.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// capSysResource is CAP_SYS_RESOURCE's bit in /proc/<pid>/status CapBnd.
const capSysResource = 24

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "runc-capfix: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	runc, err := findRunc()
	if err != nil {
		return err
	}
	missing, err := lacksCapability(capSysResource)
	if err != nil {
		return err
	}
	if missing {
		oomFloor, err := ownOOMScoreAdj()
		if err != nil {
			return err
		}
		for _, f := range specFiles(args) {
			if err := rewrite(f, oomFloor); err != nil {
				return fmt.Errorf("adapting %s: %w", f, err)
			}
		}
	}
	return syscall.Exec(runc, append([]string{"runc"}, args...), os.Environ())
}

// findRunc returns the real runc: RUNC_CAPFIX_RUNC, else the first runc on
// PATH or in the usual places that is not this program.
func findRunc() (string, error) {
	if p := os.Getenv("RUNC_CAPFIX_RUNC"); p != "" {
		return p, nil
	}
	self, _ := os.Executable()
	candidates := []string{"/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc", "/usr/local/bin/runc"}
	if p, err := exec.LookPath("runc"); err == nil {
		candidates = append([]string{p}, candidates...)
	}
	for _, p := range candidates {
		if real, err := filepath.EvalSymlinks(p); err == nil && real != self {
			if st, err := os.Stat(real); err == nil && st.Mode()&0o111 != 0 {
				return real, nil
			}
		}
	}
	return "", fmt.Errorf("no runc binary found (set RUNC_CAPFIX_RUNC)")
}

// specFiles returns the JSON files runc will read capabilities from: the
// bundle's config.json for create/run, the --process file for exec.
func specFiles(args []string) []string {
	var cmd, bundle, process string
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, value, hasValue := strings.Cut(a, "=")
		next := func() string {
			if hasValue {
				return value
			}
			if i+1 < len(args) {
				i++
				return args[i]
			}
			return ""
		}
		switch {
		case name == "--bundle" || name == "-b":
			bundle = next()
		case name == "--process" || name == "-p":
			process = next()
		case cmd == "" && !strings.HasPrefix(a, "-"):
			cmd = a
		case cmd == "" && takesValue(name) && !hasValue:
			i++ // a global option's value, e.g. --root /run/runc
		}
	}
	switch cmd {
	case "create", "run":
		if bundle == "" {
			bundle = "."
		}
		return []string{filepath.Join(bundle, "config.json")}
	case "exec":
		if process != "" {
			return []string{process}
		}
	}
	return nil
}

// takesValue reports whether a runc global option is followed by a value.
func takesValue(name string) bool {
	switch name {
	case "--root", "--log", "--log-format", "--criu", "--rootless":
		return true
	}
	return false
}

// rewrite removes CAP_SYS_RESOURCE from every capability list in the file
// (a full spec holds them under "process", a --process file at its top) and
// raises a negative oomScoreAdj to floor.
func rewrite(path string, floor int) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		return err
	}
	proc := doc
	if p, ok := doc["process"].(map[string]any); ok {
		proc = p
	}
	if caps, ok := proc["capabilities"].(map[string]any); ok {
		for set, v := range caps {
			list, _ := v.([]any)
			kept := make([]any, 0, len(list))
			for _, c := range list {
				if c != "CAP_SYS_RESOURCE" {
					kept = append(kept, c)
				}
			}
			caps[set] = kept
		}
	}
	if adj, ok := proc["oomScoreAdj"].(float64); ok && int(adj) < floor {
		proc["oomScoreAdj"] = floor
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	return os.WriteFile(path, out, st.Mode().Perm())
}

// lacksCapability reports whether bit is missing from this process's
// capability bounding set.
func lacksCapability(bit uint) (bool, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapBnd:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return false, fmt.Errorf("parse CapBnd %q: %w", v, err)
			}
			return mask&(1<<bit) == 0, nil
		}
	}
	return false, fmt.Errorf("no CapBnd line in /proc/self/status")
}

func ownOOMScoreAdj() (int, error) {
	b, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
