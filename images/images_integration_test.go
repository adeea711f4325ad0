package images_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/docker"
)

// countingEngine counts the engine builds that a build asked for.
type countingEngine struct {
	images.Builder
	builds atomic.Int32
	// lockPath, when set, is watched: sawLock is set if an engine build
	// began while the file existed.
	lockPath string
	sawLock  atomic.Bool
}

func (c *countingEngine) Build(ctx context.Context, spec backend.BuildSpec, onLine func(backend.BuildLine)) (string, error) {
	c.builds.Add(1)
	if c.lockPath != "" {
		if _, err := os.Stat(c.lockPath); err == nil {
			c.sawLock.Store(true)
		}
	}
	return c.Builder.Build(ctx, spec, onLine)
}

type eventLog struct {
	mu     sync.Mutex
	events []images.Event
}

func (l *eventLog) add(ev images.Event) {
	l.mu.Lock()
	l.events = append(l.events, ev)
	l.mu.Unlock()
}

// contains reports whether an event's message holds s.
func (l *eventLog) contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ev := range l.events {
		if strings.Contains(ev.Message, s) {
			return true
		}
	}
	return false
}

// aptLayerCached reports whether the build reused the apt layer.
func (l *eventLog) aptLayerCached() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	aptStep := ""
	for _, ev := range l.events {
		if ev.Phase != "build" {
			continue
		}
		if strings.HasPrefix(ev.Message, "RUN cd /tmp/spawnd/apt") {
			aptStep = ev.Step
		}
		if aptStep != "" && ev.Step == aptStep && ev.Cached {
			return true
		}
	}
	return false
}

// testEnvName is a fresh env name (prefix-<8 hex>); the env's images,
// its lock stage included, are removed when the test ends.
func testEnvName(t *testing.T, eng *docker.Engine, prefix string) string {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	env := prefix + "-" + hex.EncodeToString(b)
	t.Cleanup(func() {
		testenv.RemoveImages(eng, labels.Env, env)
		_, _ = testenv.Client(eng).ImageRemove(context.Background(), "spawnd-lock/"+env+":stage", client.ImageRemoveOptions{Force: true})
	})
	return env
}

func writeSpec(t *testing.T, path, env, base, index string, pkgs ...string) {
	t.Helper()
	quoted := make([]string, len(pkgs))
	for i, p := range pkgs {
		quoted[i] = fmt.Sprintf("%q", p)
	}
	body := fmt.Sprintf(`name: %s
description: integration test env
base: %s
apt: [python3-pip]
pip:
  index_url: %s
  packages: [%s]
jupyter:
  kernels: [{name: %s, display_name: "Test"}]
  cmd: [python3, -c, "import spawndtesta; print(spawndtesta.VERSION)"]
`, env, base, index, strings.Join(quoted, ", "), env)
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLockBuildRelockPushSaveLoad(t *testing.T) {
	eng := testenv.Engine(t)
	base := testenv.EnsureDebianBase(t, eng)
	env := testEnvName(t, eng, "itest")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	ix := testenv.NewIndex(t)
	sumB := ix.Add("spawndtestb", "1.0")
	sumA := ix.Add("spawndtesta", "1.0", "spawndtestb>=1.0")
	dir := t.TempDir()
	spec := filepath.Join(dir, env+".yaml")
	writeSpec(t, spec, env, base, ix.URL, "spawndtesta")
	ce := &countingEngine{Builder: eng, lockPath: envs.LockPath(spec)}

	// First build: locks (apt and pip, resolved by the real tools), then
	// builds; the lock file appears only once the image exists, so a daemon
	// watching it never sees a lock it cannot start. With a whole system CA
	// bundle as extra certificates (`--ca-cert
	// /etc/ssl/certs/ca-certificates.crt`), more than Linux lets an
	// environment variable hold: once "argument list too long".
	var log1 eventLog
	res, err := images.Build(ctx, ce, spec, images.Options{Network: "host", Progress: log1.add, CACerts: bigCABundle(t)})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Built || !res.Locked {
		t.Fatalf("first build: %+v", res)
	}
	if ce.sawLock.Load() {
		t.Fatal("the first build wrote its lock before the image existed")
	}
	ce.lockPath = ""
	l, err := envs.ReadLock(envs.LockPath(spec))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, p := range l.Pip.Packages {
		got[p.Name+"=="+p.Version] = p.SHA256
	}
	if got["spawndtesta==1.0"] != sumA || got["spawndtestb==1.0"] != sumB || len(got) != 2 {
		t.Fatalf("pip lock %v, want a and b 1.0 with their wheel hashes", got)
	}
	hasPip := false
	for _, a := range l.Apt {
		hasPip = hasPip || a.Name == "python3-pip"
	}
	if !hasPip || l.Base.Digest == "" || res.Tag != l.Tag() {
		t.Fatalf("lock: pip in apt %v, base %q, tag %s vs %s", hasPip, l.Base.Digest, res.Tag, l.Tag())
	}
	info, err := eng.ImageInspect(ctx, res.Tag)
	if err != nil {
		t.Fatal(err)
	}
	if info.Labels[labels.LockDigest] != l.Digest || info.Labels["org.opencontainers.image.title"] == "" {
		t.Fatalf("labels %v", info.Labels)
	}
	run, err := eng.RunCapture(ctx, backend.RunSpec{Image: res.Tag, Cmd: []string{"sh", "-c", "id -u; python3 -c 'import spawndtesta, spawndtestb; print(spawndtesta.VERSION)'; cat /usr/local/share/jupyter/kernels/" + env + "/kernel.json"}})
	if err != nil {
		t.Fatal(err)
	}
	out := string(run.Stdout)
	if run.ExitCode != 0 || !strings.HasPrefix(out, "0\n1.0\n") || !strings.Contains(out, `"display_name": "Test"`) {
		t.Fatalf("image content (exit %d): %s %s", run.ExitCode, out, run.Stderr)
	}

	// Unchanged lock, image present: no engine build at all.
	before := ce.builds.Load()
	res2, err := images.Build(ctx, ce, spec, images.Options{Network: "host"})
	if err != nil {
		t.Fatal(err)
	}
	if res2.Built || ce.builds.Load() != before || res2.ImageID != res.ImageID {
		t.Fatalf("no-op build ran %d engine builds: %+v", ce.builds.Load()-before, res2)
	}
	// The image carries what this spawnd puts in every image: its plan
	// label, the allow-list of the spec's kernels.
	run, err = eng.RunCapture(ctx, backend.RunSpec{Image: res.Tag, Cmd: []string{"cat", "/etc/jupyter/jupyter_server_config.json"}})
	if err != nil || run.ExitCode != 0 || !strings.Contains(string(run.Stdout), `"allowed_kernelspecs": [`) || !strings.Contains(string(run.Stdout), `"`+env+`"`) {
		t.Fatalf("the kernel allow-list in the image: %v %s %s", err, run.Stdout, run.Stderr)
	}
	if info.Labels[labels.Plan] != images.PlanVersion {
		t.Fatalf("the image's plan label %q; want %q", info.Labels[labels.Plan], images.PlanVersion)
	}
	// An image of the same lock that an older spawnd built (its plan label
	// older): not "up to date", built again under the same tag.
	old := fromImageContext(t, res.Tag)
	if _, err := eng.Build(ctx, backend.BuildSpec{Context: old, Tags: []string{res.Tag}, Labels: map[string]string{labels.Plan: "1", labels.Test: "1"}}, func(backend.BuildLine) {}); err != nil {
		t.Fatal(err)
	}
	var logOld eventLog
	resOld, err := images.Build(ctx, ce, spec, images.Options{Network: "host", Progress: logOld.add})
	if err != nil {
		t.Fatal(err)
	}
	if after, _ := eng.ImageInspect(ctx, res.Tag); !resOld.Built || after.Labels[labels.Plan] != images.PlanVersion || !logOld.contains("built by an older spawnd") {
		t.Fatalf("an older spawnd's image of the same lock: %+v, plan label now %q", resOld, after.Labels[labels.Plan])
	}
	if resOld.ImageID != res.ImageID {
		t.Fatalf("rebuilt from the same lock: %s; the first build gave %s (same lock, same image)", resOld.ImageID, res.ImageID)
	}

	// The spec changes: a stale lock is refused, and nothing changes.
	lockBytes, _ := os.ReadFile(envs.LockPath(spec))
	ix.Add("spawndtesta", "1.1", "spawndtestb>=1.0")
	writeSpec(t, spec, env, base, ix.URL, "spawndtesta>=1.1")
	if _, err := images.Build(ctx, ce, spec, images.Options{Network: "host"}); err == nil || !strings.Contains(err.Error(), "spec checksum changed") {
		t.Fatalf("stale lock: %v", err)
	}
	if now, _ := os.ReadFile(envs.LockPath(spec)); !bytes.Equal(now, lockBytes) {
		t.Fatal("a refused build changed the lock")
	}

	// Relock: a new lock and image; the apt layer comes from the cache.
	var log2 eventLog
	res3, err := images.Build(ctx, ce, spec, images.Options{Network: "host", Relock: true, Progress: log2.add})
	if err != nil {
		t.Fatal(err)
	}
	if !res3.Built || res3.Tag == res.Tag {
		t.Fatalf("relock build: %+v", res3)
	}
	if !log2.aptLayerCached() {
		t.Fatal("a pip-only change rebuilt the apt layer")
	}
	l3, _ := envs.ReadLock(envs.LockPath(spec))
	if l3.Digest == l.Digest || !strings.Contains(string(l3.Marshal()), `"version": "1.1"`) {
		t.Fatal("the relock did not pin 1.1")
	}

	// Bad input leaves the lock and the image as they were.
	lockBytes, _ = os.ReadFile(envs.LockPath(spec))
	writeSpec(t, spec, env, base, ix.URL, "spawndtesta>=1.1", "nosuchpackage")
	_, err = images.Build(ctx, ce, spec, images.Options{Network: "host", Relock: true})
	if err == nil || !strings.Contains(err.Error(), "pip.packages[1]") || !strings.Contains(err.Error(), "nosuchpackage") {
		t.Fatalf("unknown package: %v", err)
	}
	if now, _ := os.ReadFile(envs.LockPath(spec)); !bytes.Equal(now, lockBytes) {
		t.Fatal("a failed relock changed the lock")
	}
	if _, err := eng.ImageInspect(ctx, res3.Tag); err != nil {
		t.Fatal("a failed relock removed the previous image")
	}
	writeSpec(t, spec, env, base, "http://127.0.0.1:1/simple", "spawndtesta")
	if _, err := images.Build(ctx, ce, spec, images.Options{Network: "host", Relock: true}); err == nil || !strings.Contains(err.Error(), "pip") {
		t.Fatalf("unreachable index: %v", err)
	}
	writeSpec(t, spec, env, "spawnd-test/no-such-base:1", ix.URL, "spawndtesta")
	if _, err := images.Build(ctx, ce, spec, images.Options{Network: "host", Relock: true}); err == nil || !strings.Contains(err.Error(), "does not exist") || !strings.Contains(err.Error(), ":3:") {
		t.Fatalf("missing base: %v", err)
	}
	writeSpec(t, spec, env, base, ix.URL, "spawndtesta>=1.1")
	tampered := bytes.Replace(lockBytes, []byte(`"1.1"`), []byte(`"1.2"`), 1)
	if err := os.WriteFile(envs.LockPath(spec), tampered, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := images.Build(ctx, ce, spec, images.Options{Network: "host"}); err == nil || !strings.Contains(err.Error(), "edited by hand") {
		t.Fatalf("tampered lock: %v", err)
	}
	_ = os.WriteFile(envs.LockPath(spec), lockBytes, 0o644)

	// Push to a registry on 127.0.0.1 and pull back by digest.
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")
	ref, err := images.Push(ctx, eng, res3.Tag, host+"/spawnd/"+env+":test")
	if err != nil {
		t.Fatal(err)
	}
	dref, err := name.ParseReference(ref)
	if err != nil || !strings.Contains(ref, "@sha256:") {
		t.Fatalf("push returned %q (%v)", ref, err)
	}
	pulled, err := remote.Image(dref)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := pulled.ConfigName()
	if "sha256:"+cfg.Hex != res3.ImageID {
		t.Fatalf("pulled config %s, built image %s", cfg, res3.ImageID)
	}
	pullTag, _ := name.NewTag("spawnd-test/pulled-" + env + ":1")
	if err := eng.WriteImage(ctx, pullTag.String(), pulled); err != nil {
		t.Fatal(err)
	}
	if pi, err := eng.ImageInspect(ctx, pullTag.String()); err != nil || pi.ID != res3.ImageID {
		t.Fatalf("image pulled back by digest: %v %v", pi.ID, err)
	}

	// Save to an OCI archive, drop the tag, load it back.
	archive := filepath.Join(dir, "env.oci.tar")
	if _, err := images.SaveOCI(ctx, eng, res3.Tag, archive); err != nil {
		t.Fatal(err)
	}
	if _, err := testenv.Client(eng).ImageRemove(ctx, res3.Tag, client.ImageRemoveOptions{}); err != nil {
		t.Fatal(err)
	}
	tags, err := images.LoadOCI(ctx, eng, archive)
	if err != nil || len(tags) != 1 || tags[0] != res3.Tag {
		t.Fatalf("load: %v %v", tags, err)
	}
	if li, err := eng.ImageInspect(ctx, res3.Tag); err != nil || li.ID != res3.ImageID {
		t.Fatalf("loaded image %v %v, want %s", li.ID, err, res3.ImageID)
	}
}

// TestWrongPackageHashFailsAndLeavesNoImage: a lock whose pip hash does not
// match the wheel the index serves (re-sealed, so the lock itself is
// accepted: the fetch's own check must catch it) fails, names the package
// and the mismatch, and leaves no image under the lock's tag.
func TestWrongPackageHashFailsAndLeavesNoImage(t *testing.T) {
	eng := testenv.Engine(t)
	base := testenv.EnsureDebianBase(t, eng)
	env := testEnvName(t, eng, "itest")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ix := testenv.NewIndex(t)
	ix.Add("spawndtestc", "1.0")
	spec := filepath.Join(t.TempDir(), env+".yaml")
	writeSpec(t, spec, env, base, ix.URL, "spawndtestc")
	l, _, err := images.LockOrLoad(ctx, eng, mustLoad(t, spec), spec, images.Options{Network: "host"})
	if err != nil {
		t.Fatal(err)
	}
	if l.Pip == nil || len(l.Pip.Packages) != 1 {
		t.Fatalf("pip lock: %+v", l.Pip)
	}
	l.Pip.Packages[0].SHA256 = strings.Repeat("0", 64) // not the wheel's
	l.Seal()
	if err := envs.WriteLock(envs.LockPath(spec), l); err != nil {
		t.Fatal(err)
	}
	_, err = images.Build(ctx, eng, spec, images.Options{Network: "host"})
	if err == nil {
		t.Fatal("a build with a wrong package hash succeeded")
	}
	t.Logf("refused: %s", err)
	var mismatch *images.HashMismatchError
	if !errors.As(err, &mismatch) || mismatch.File.Name != "spawndtestc" || !strings.Contains(err.Error(), "but the lock says "+strings.Repeat("0", 64)) {
		t.Fatalf("the error does not name spawndtestc's hash mismatch: %v", err)
	}
	if err := eng.CheckImage(ctx, l.Tag()); err == nil {
		t.Fatalf("a failed build left the image %s", l.Tag())
	}
}

func mustLoad(t *testing.T, spec string) *envs.Spec {
	t.Helper()
	s, err := envs.Load(spec)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// bigCABundle is the host's CA bundle, repeated past 128 KiB (Linux's limit
// for one environment variable) where it is smaller.
func bigCABundle(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	if err != nil {
		t.Fatalf("the host's CA bundle (Debian's ca-certificates): %v", err)
	}
	out := b
	for len(out) <= 128<<10 {
		out = append(append(out, '\n'), b...)
	}
	return out
}

// fromImageContext is a build context of one line: FROM image.
func fromImageContext(t *testing.T, image string) io.Reader {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	df := []byte("FROM " + image + "\n")
	if err := tw.WriteHeader(&tar.Header{Name: "Dockerfile", Mode: 0o644, Size: int64(len(df))}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(df); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf
}

// TestJupyterLabSettingsInARealImage: jupyter.settings through a real
// JupyterLab from PyPI (issue #31). A misspelt plugin ID fails the build
// with the spec's file, line and field, and leaves no lock and no image;
// spelt right, JupyterLab's own settings code (jupyterlab_server's
// overrides reader) sees the env's setting beside spawnd's news and update
// defaults, and the server's kernel manager, configured from the image's
// files, lists exactly the spec's kernel.
func TestJupyterLabSettingsInARealImage(t *testing.T) {
	eng := testenv.Engine(t)
	base := testenv.EnsureDebianBase(t, eng)
	env := testEnvName(t, eng, "labset")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	spec := filepath.Join(t.TempDir(), env+".yaml")
	write := func(plugin string) {
		body := fmt.Sprintf(`name: %s
description: JupyterLab settings test env
base: %s
apt: [python3, python3-pip]
pip:
  packages: ["jupyterlab==4.6.6", "ipykernel"]
jupyter:
  kernels: [{name: lab, display_name: "Lab"}]
  settings:
    %q:
      recordTiming: true
`, env, base, plugin)
		if err := os.WriteFile(spec, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("@jupyterlab/notebok-extension:tracker")
	_, err := images.Build(ctx, eng, spec, images.Options{CACerts: testenv.HostCACerts(t)})
	want := spec + `:10:5: jupyter.settings["@jupyterlab/notebok-extension:tracker"]: the image's JupyterLab has no plugin`
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("a misspelt plugin: %v; want an error beginning %q", err, want)
	}
	if _, err := os.Stat(envs.LockPath(spec)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused build left a lock: %v", err)
	}
	f := client.Filters{}
	f.Add("label", labels.Env+"="+env)
	imgs, err := testenv.Client(eng).ImageList(ctx, client.ImageListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, im := range imgs.Items {
		if im.Labels[labels.Stage] == "" {
			t.Fatalf("a refused build left an image of the env: %+v", im)
		}
	}

	write("@jupyterlab/notebook-extension:tracker")
	res, err := images.Build(ctx, eng, spec, images.Options{CACerts: testenv.HostCACerts(t)})
	if err != nil {
		t.Fatal(err)
	}
	probe := `import json, os
from jupyterlab.commands import get_app_dir
from jupyterlab_server.settings_utils import _get_overrides
from jupyter_client.kernelspec import KernelSpecManager
from traitlets.config.loader import JSONFileConfigLoader
overrides, err = _get_overrides(os.path.join(get_app_dir(), "settings"))
conf = JSONFileConfigLoader("jupyter_server_config.json", "/etc/jupyter").load_config()
print(json.dumps({"overrides": overrides, "error": str(err), "kernels": sorted(KernelSpecManager(config=conf).find_kernel_specs())}))
`
	run, err := eng.RunCapture(ctx, backend.RunSpec{Image: res.Tag, Cmd: []string{"python3", "-c", probe}})
	if err != nil || run.ExitCode != 0 {
		t.Fatalf("probing the image: %v %s %s", err, run.Stdout, run.Stderr)
	}
	var got struct {
		Overrides map[string]map[string]any `json:"overrides"`
		Error     string                    `json:"error"`
		Kernels   []string                  `json:"kernels"`
	}
	if err := json.Unmarshal(run.Stdout, &got); err != nil {
		t.Fatalf("%v: %s", err, run.Stdout)
	}
	n := got.Overrides["@jupyterlab/apputils-extension:notification"]
	if got.Error != "" || got.Overrides["@jupyterlab/notebook-extension:tracker"]["recordTiming"] != true || n["fetchNews"] != "false" || n["checkForUpdates"] != false {
		t.Fatalf("JupyterLab's overrides in the image: %+v", got)
	}
	if strings.Join(got.Kernels, ",") != "lab" {
		t.Fatalf("the kernels the server lists: %v; want exactly the spec's (lab)", got.Kernels)
	}
}
