package images_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
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
