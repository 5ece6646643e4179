// Tests of the build pipeline scripts (the scripts are the product here).
package build_test

import (
	"archive/zip"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// istioDir is the default release's unpacked source (read-only), from
// wherever the build gets it (the cache, ISTIO_SRC_ARCHIVES, a clone).
func istioDir(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("bash", "-c", "source ./lib.sh && ISTIO_SRC= istio_source").Output()
	require.NoError(t, err)
	return strings.TrimSpace(string(out))
}

// versionValue is VERSION's value of key (ISTIO_DEFAULT, ISTIO_PREVIOUS).
func versionValue(t *testing.T, key string) string {
	t.Helper()
	out, err := exec.Command("bash", "-c", "source ../VERSION && echo \"${"+key+"}\"").Output()
	require.NoError(t, err)
	v := strings.TrimSpace(string(out))
	require.NotEmpty(t, v, "VERSION has no %s", key)
	return v
}

// patchedFiles are the files of the patches these tests apply (TestSkipFile
// skips 0002–0005), plus go.mod: enough of an Istio tree to apply them to.
var patchedFiles = []string{"go.mod", "pilot/pkg/serviceregistry/provider/providers.go",
	"pilot/pkg/bootstrap/options.go", "pilot/cmd/pilot-discovery/app/cmd.go",
	"pilot/pkg/bootstrap/servicecontroller.go", "pilot/pkg/networking/grpcgen/grpcgen.go"}

// movedSource copies patchedFiles of the default release into dir, with
// upstream's own case added exactly where patch 0002 adds Consul's.
func movedSource(t *testing.T, dir string) {
	t.Helper()
	istio := istioDir(t)
	for _, f := range patchedFiles {
		data, err := os.ReadFile(filepath.Join(istio, f))
		require.NoError(t, err)
		if strings.HasSuffix(f, "servicecontroller.go") {
			before := "\t\tdefault:\n\t\t\treturn fmt.Errorf(\"service registry"
			require.Contains(t, string(data), before)
			data = []byte(strings.Replace(string(data), before,
				"\t\tcase provider.External:\n\t\t\tlog.Infof(\"external\")\n"+before, 1))
		}
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(dir, f)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, f), data, 0o644))
	}
}

// gitTree is the git tree ID of dir's files, as VERSION pins a release.
func gitTree(t *testing.T, dir string) string {
	t.Helper()
	gitDir := t.TempDir()
	git := func(args ...string) string {
		cmd := exec.Command("git", args...)
		cmd.Env = append(os.Environ(), "GIT_DIR="+gitDir, "GIT_WORK_TREE="+dir)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "git %v: %s", args, out)
		return strings.TrimSpace(string(out))
	}
	git("init", "-q")
	git("add", "-A", "-f")
	return git("write-tree")
}

// A source tree that moved under a patch makes the build stop, naming the
// patch and the conflicting file and saying how to continue.
func TestConflictingSourceNamesPatchAndFiles(t *testing.T) {
	src := t.TempDir()
	movedSource(t, src)
	work := t.TempDir()
	// A release VERSION does not know, pinned from the environment.
	env := append(os.Environ(), "ISTIO=0.0.0-moved", "ISTIO_0_0_0_moved_TREE="+gitTree(t, src),
		"ISTIO_SRC="+src, "WORK_DIR="+work)
	cmd := exec.Command("./build.sh")
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	require.Error(t, err, "build must fail:\n%s", out)
	text := string(out)
	queue, err := filepath.Glob("../patches/[0-9][0-9][0-9][0-9]-*.patch")
	require.NoError(t, err)
	assert.Contains(t, text, fmt.Sprintf("patch 2 of %d does not apply: patches/0002-", len(queue)))
	assert.Contains(t, text, "    pilot/pkg/bootstrap/servicecontroller.go")
	assert.Contains(t, text, "git am --continue")
	assert.Contains(t, text, "make rebase")
	// The tree is left mid-am for inspection, and a rerun refuses to clobber it.
	assert.DirExists(t, filepath.Join(work, "istio/.git/rebase-apply"))
	cmd = exec.Command("./build.sh")
	cmd.Env = env
	out, err = cmd.CombinedOutput()
	require.Error(t, err)
	assert.Contains(t, string(out), "half-applied")
}

// A source that is not the pinned release is refused before anything is
// built from it, whatever it calls itself.
func TestWrongSourceIsRefused(t *testing.T) {
	src := t.TempDir()
	movedSource(t, src)
	cmd := exec.Command("./build.sh")
	cmd.Env = append(os.Environ(), "ISTIO=1.30.3", "ISTIO_SRC="+src, "WORK_DIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	require.Error(t, err, "build must fail:\n%s", out)
	assert.Contains(t, string(out), "is not Istio 1.30.3: its git tree is "+gitTree(t, src)+
		", VERSION pins 128882bdedf3a440c25456c500558a990292c52e")

	// A checkout is judged by its commit.
	for _, args := range [][]string{{"init", "-q"}, {"add", "-A"}, {"commit", "-q", "-m", "not 1.30.3"}} {
		git := exec.Command("git", append([]string{"-C", src}, args...)...)
		git.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@t.invalid",
			"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@t.invalid")
		out, err := git.CombinedOutput()
		require.NoError(t, err, "git %v: %s", args, out)
	}
	head, err := exec.Command("git", "-C", src, "rev-parse", "HEAD").Output()
	require.NoError(t, err)
	cmd = exec.Command("./build.sh")
	cmd.Env = append(os.Environ(), "ISTIO=1.30.3", "ISTIO_SRC="+src, "WORK_DIR="+t.TempDir())
	out, err = cmd.CombinedOutput()
	require.Error(t, err, "build must fail:\n%s", out)
	assert.Contains(t, string(out), "is at commit "+strings.TrimSpace(string(head))+
		"; VERSION pins Istio 1.30.3 at 56df41f63e513f834c9a3af33d8aed82d1d961f2")

	cmd = exec.Command("./build.sh")
	cmd.Env = append(os.Environ(), "ISTIO=1.2.3", "ISTIO_SRC=", "WORK_DIR="+t.TempDir())
	out, err = cmd.CombinedOutput()
	require.Error(t, err)
	assert.Contains(t, string(out), "Istio 1.2.3 is not pinned: VERSION has no ISTIO_1_2_3_COMMIT")
}

func TestVerifyPatchesPasses(t *testing.T) {
	out, err := exec.Command("./verify-patches.sh").CombinedOutput()
	require.NoError(t, err, "%s", out)
	for _, v := range []string{"Istio " + versionValue(t, "ISTIO_DEFAULT"), "Istio " + versionValue(t, "ISTIO_PREVIOUS"),
		"istio.io/istio@v0.0.0-20260826214018-9739e10eb9d7", "istio.io/istio@v0.0.0-20260827124520-eed52ebb66ad"} {
		assert.Contains(t, string(out), "queue applies to "+v)
	}
}

// verify-patches names the release and the files a patch conflicts with.
// It runs from a copy of the project whose VERSION lists a moved release,
// with that release's source in a private cache.
func TestVerifyPatchesNamesVersionAndFiles(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"build", "patches"} {
		out, err := exec.Command("cp", "-r", filepath.Join("..", d), root).CombinedOutput()
		require.NoError(t, err, "%s", out)
	}
	version, err := os.ReadFile("../VERSION")
	require.NoError(t, err)
	const commit = "0123456789abcdef0123456789abcdef01234567"
	version = append(version, []byte("\nISTIO_PREVIOUS=9.9.9\nISTIO_9_9_9_COMMIT="+commit+"\nISTIO_VERIFY_MODULES=\n")...)
	require.NoError(t, os.WriteFile(filepath.Join(root, "VERSION"), version, 0o644))

	cache := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(cache, "istio-src"), 0o755))
	def := istioDir(t)
	require.NoError(t, os.Symlink(def, filepath.Join(cache, "istio-src", filepath.Base(def))))
	movedSource(t, filepath.Join(cache, "istio-src", "istio-9.9.9-"+commit[:12]))

	cmd := exec.Command(filepath.Join(root, "build/verify-patches.sh"))
	cmd.Env = append(os.Environ(), "PILOT_CONSUL_CACHE="+cache)
	out, err := cmd.CombinedOutput()
	require.Error(t, err, "verify-patches must fail:\n%s", out)
	assert.Contains(t, string(out), "queue applies to Istio "+versionValue(t, "ISTIO_DEFAULT"))
	assert.Contains(t, string(out), "0002-consul-run-the-Consul-registry-when-registries-lists.patch does not apply to Istio 9.9.9; "+
		"conflicting files: pilot/pkg/bootstrap/servicecontroller.go")
}

// A listed substitute is used only for a pin the module proxy does not
// serve: with every pin resolvable, none is applied. Runs substitute_deps
// against a module proxy in a directory that serves one pin and not the other.
func TestSubstitutionOnlyWhenPinDoesNotResolve(t *testing.T) {
	dir := t.TempDir()
	proxy := filepath.Join(dir, "proxy")
	serve(t, proxy, "example.com/served", "v1.0.0")
	serve(t, proxy, "example.com/missing", "v1.0.1")
	tree := filepath.Join(dir, "tree")
	require.NoError(t, os.MkdirAll(tree, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(tree, "go.mod"), []byte(
		"module t\n\ngo 1.21\n\nrequire (\n\texample.com/served v1.0.0\n\texample.com/missing v1.0.0\n)\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(tree, "go.sum"), nil, 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "build/istio"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "build/istio/0.0.1.deps"), []byte(
		"# why: a test\nsub example.com/served v1.0.0 v1.0.1\nsub example.com/missing v1.0.0 v1.0.1\n"+
			"sum example.com/missing v1.0.1 h1:test=\n"), 0o644))

	cmd := exec.Command("bash", "-c", `source ./lib.sh && root=$DIR tree=$DIR/tree ISTIO=0.0.1 substitute_deps`)
	cmd.Env = append(os.Environ(), "DIR="+dir, "GOPROXY=file://"+proxy, "GOSUMDB=off", "GOFLAGS=-mod=mod",
		"GOMODCACHE="+filepath.Join(dir, "modcache"))
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "dependency pin example.com/served v1.0.0 resolves: used as upstream pins it")
	assert.Contains(t, string(out), "SUBSTITUTED example.com/missing v1.0.0 => v1.0.1")
	gomod, err := os.ReadFile(filepath.Join(tree, "go.mod"))
	require.NoError(t, err)
	assert.Contains(t, string(gomod), "replace example.com/missing v1.0.0 => example.com/missing v1.0.1")
	assert.NotContains(t, string(gomod), "example.com/served v1.0.0 =>")
	gosum, err := os.ReadFile(filepath.Join(tree, "go.sum"))
	require.NoError(t, err)
	assert.Contains(t, string(gosum), "example.com/missing v1.0.1 h1:test=")
	// The module cache holds read-only files; let TempDir remove them.
	_ = exec.Command("chmod", "-R", "u+w", dir).Run()
}

// serve puts module@version (a go.mod only) into a GOPROXY directory.
func serve(t *testing.T, proxy, module, version string) {
	t.Helper()
	at := filepath.Join(proxy, module, "@v")
	require.NoError(t, os.MkdirAll(at, 0o755))
	gomod := []byte("module " + module + "\n\ngo 1.21\n")
	require.NoError(t, os.WriteFile(filepath.Join(at, version+".mod"), gomod, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(at, version+".info"),
		[]byte(`{"Version":"`+version+`","Time":"2026-01-01T00:00:00Z"}`), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(at, "list"), []byte(version+"\n"), 0o644))
	f, err := os.Create(filepath.Join(at, version+".zip"))
	require.NoError(t, err)
	z := zip.NewWriter(f)
	w, err := z.Create(module + "@" + version + "/go.mod")
	require.NoError(t, err)
	_, err = w.Write(gomod)
	require.NoError(t, err)
	require.NoError(t, z.Close())
	require.NoError(t, f.Close())
}

// Build stamps hash inputs by content and clone-relative path: a fresh clone
// elsewhere gets the same stamp, so it reuses what another clone built.
func TestHashIsTheSameInAnotherClone(t *testing.T) {
	hash := func(clone string, rename string) string {
		require.NoError(t, os.MkdirAll(filepath.Join(clone, "patches"), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(clone, "patches", rename), []byte("same"), 0o644))
		out, err := exec.Command("bash", "-c", `source ./lib.sh && root=$1 work=$1/_work hash_of "$1/patches"`,
			"-", clone).Output()
		require.NoError(t, err)
		return strings.TrimSpace(string(out))
	}
	a := hash(t.TempDir(), "0001-x.patch")
	assert.Equal(t, a, hash(t.TempDir(), "0001-x.patch"))
	assert.NotEqual(t, a, hash(t.TempDir(), "0002-x.patch"), "a renamed file is another input")
}

// A release may skip patches (build/istio/<tag>.skip, each with why): the
// queue without them must apply, and a skip line must name a patch of the
// queue and say why.
func TestSkipFile(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"build", "patches"} {
		out, err := exec.Command("cp", "-r", filepath.Join("..", d), root).CombinedOutput()
		require.NoError(t, err, "%s", out)
	}
	version, err := os.ReadFile("../VERSION")
	require.NoError(t, err)
	const commit = "0123456789abcdef0123456789abcdef01234567"
	version = append(version, []byte("\nISTIO_PREVIOUS=9.9.9\nISTIO_9_9_9_COMMIT="+commit+"\nISTIO_VERIFY_MODULES=\n")...)
	require.NoError(t, os.WriteFile(filepath.Join(root, "VERSION"), version, 0o644))
	cache := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(cache, "istio-src"), 0o755))
	def := istioDir(t)
	require.NoError(t, os.Symlink(def, filepath.Join(cache, "istio-src", filepath.Base(def))))
	movedSource(t, filepath.Join(cache, "istio-src", "istio-9.9.9-"+commit[:12]))
	verify := func() (string, error) {
		cmd := exec.Command(filepath.Join(root, "build/verify-patches.sh"))
		cmd.Env = append(os.Environ(), "PILOT_CONSUL_CACHE="+cache)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	// 9.9.9 moved the code 0002 edits; 0003, 0004 and 0005 build on 0002.
	// It is the default release otherwise, and skips what that skips.
	var skip strings.Builder
	for _, p := range []string{"0002", "0003", "0004", "0005"} {
		matches, _ := filepath.Glob(filepath.Join(root, "patches", p+"-*.patch"))
		require.Len(t, matches, 1)
		skip.WriteString(filepath.Base(matches[0]) + "  the bootstrap moved in this release\n")
	}
	if def, err := os.ReadFile(filepath.Join("istio", versionValue(t, "ISTIO_DEFAULT")+".skip")); err == nil {
		skip.Write(def)
	}
	require.NoError(t, os.WriteFile(filepath.Join(root, "build/istio/9.9.9.skip"), []byte(skip.String()), 0o644))
	out, err := verify()
	require.NoError(t, err, out)
	assert.Contains(t, out, "queue applies to Istio 9.9.9 (without 0002-")

	require.NoError(t, os.WriteFile(filepath.Join(root, "build/istio/9.9.9.skip"),
		[]byte(skip.String()+"0099-gone.patch  was dropped\n0001-consul-add-the-Consul-registry-ID-and-its-flags.patch\n"), 0o644))
	out, err = verify()
	require.Error(t, err, out)
	assert.Contains(t, out, "9.9.9.skip: 0099-gone.patch is not in patches/ (stale line)")
	assert.Contains(t, out, "9.9.9.skip: 0001-consul-add-the-Consul-registry-ID-and-its-flags.patch has no reason")
}

// The upstream istiod (build-upstream.sh) is the release as shipped: its
// version is the bare tag, it knows no Consul registry and no Consul flag,
// and a second build reuses the first.
func TestUpstreamBuildIsTheReleaseAsShipped(t *testing.T) {
	out, err := exec.Command("./build-upstream.sh").CombinedOutput()
	require.NoError(t, err, "%s", out)
	release, err := exec.Command("bash", "-c", "source ./lib.sh && echo $ISTIO").Output()
	require.NoError(t, err)
	bin := filepath.Join("..", "out", strings.TrimSpace(string(release))+"-upstream", "pilot-discovery")
	version, err := exec.Command(bin, "version", "--short").Output()
	require.NoError(t, err)
	assert.Equal(t, "client version: "+strings.TrimSpace(string(release)), strings.TrimSpace(string(version)))
	help, err := exec.Command(bin, "discovery", "--help").CombinedOutput()
	require.NoError(t, err, "%s", help)
	assert.Contains(t, string(help), "choose one or more from {Kubernetes, Mock}", "no Consul registry")
	assert.NotContains(t, string(help), "--consul", "no Consul flag")
	again, err := exec.Command("./build-upstream.sh").CombinedOutput()
	require.NoError(t, err, "%s", again)
	assert.Contains(t, string(again), "is up to date", "a second build reuses the first")
}
