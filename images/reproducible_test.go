package images_test

import (
	"context"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/spawnd/docker"
)

// TestSameLockSameDigestOnTwoEngines builds one lock on the machine's
// engine, bundles it, and rebuilds it from the bundle on a private dockerd
// with its own data root, no base image, an empty build cache, an empty
// package cache and no network for anything: it wants the same image, the
// same image ID (config digest) and the same manifest digest. On the way, a
// bundle missing a package, holding a wrong one, or made for another lock is
// refused, naming the package, and leaves nothing behind.
func TestSameLockSameDigestOnTwoEngines(t *testing.T) {
	eng := testenv.Engine(t)
	base := testenv.EnsureDebianBase(t, eng)
	own := testenv.StartOwnEngine(t)
	eng2, err := docker.New(own.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer eng2.Close()

	env := testEnvName(t, eng, "repro")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ix := testenv.NewIndex(t)
	ix.Add("spawndtestb", "1.0")
	ix.Add("spawndtesta", "1.0", "spawndtestb>=1.0")
	spec := filepath.Join(t.TempDir(), env+".yaml")
	writeSpec(t, spec, env, base, ix.URL, "spawndtesta")
	opts := images.Options{Network: "host", CacheDir: t.TempDir()}
	l, _, err := images.LockOrLoad(ctx, eng, mustLoad(t, spec), spec, opts)
	if err != nil {
		t.Fatal(err)
	}

	res, err := images.Build(ctx, eng, spec, opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Tag != l.Tag() || !res.Built {
		t.Fatalf("built %+v, want a build of %s", res, l.Tag())
	}
	bundle := filepath.Join(t.TempDir(), "bundle")
	if err := images.WriteBundle(ctx, eng, l, images.Cache{Dir: opts.CacheDir}, bundle); err != nil {
		t.Fatal(err)
	}
	if err := images.WriteBundle(ctx, eng, l, images.Cache{Dir: opts.CacheDir}, bundle); err == nil {
		t.Fatal("a bundle was written over an existing directory")
	}
	files := images.Files(l)
	if len(files) < 3 || files[0].Kind != "apt" || files[len(files)-1].Kind != "pip" {
		t.Fatalf("the lock names too few package files to test bundles with: %+v", files)
	}
	offline := images.Options{Network: "none"} // not even a fetch may reach a network

	// Broken bundles: each refused before anything is built or tagged.
	other := *l
	other.Description = "another lock"
	other.Seal()
	faults := []struct {
		name  string
		spoil func(t *testing.T, dir string)
		want  string
	}{
		{"a missing wheel", func(t *testing.T, dir string) {
			rm(t, filepath.Join(dir, "blobs", "sha256", files[len(files)-1].SHA256))
		}, "lacks pip package " + files[len(files)-1].Name},
		{"a .deb with other bytes", func(t *testing.T, dir string) {
			write(t, filepath.Join(dir, "blobs", "sha256", files[0].SHA256), "not the package")
		}, "apt package " + files[0].Name},
		{"another lock", func(t *testing.T, dir string) {
			rm(t, dir)
			if err := images.WriteBundle(ctx, eng, &other, images.Cache{Dir: opts.CacheDir}, dir); err != nil {
				t.Fatal(err)
			}
		}, "a bundle rebuilds exactly its own lock"},
	}
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "bundle")
			if out, err := exec.Command("cp", "-a", bundle, dir).CombinedOutput(); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			f.spoil(t, dir)
			o := offline
			o.CacheDir = t.TempDir()
			_, err := images.BuildFromBundle(ctx, eng2, spec, dir, o)
			if err == nil || !strings.Contains(err.Error(), f.want) {
				t.Fatalf("build from %s: %v, want an error saying %q", f.name, err, f.want)
			}
			t.Logf("refused: %v", err)
			if err := eng2.CheckImage(ctx, l.Tag()); err == nil {
				t.Fatal("a refused bundle left an image")
			}
			if got, _ := envs.ReadLock(envs.LockPath(spec)); got == nil || got.Digest != l.Digest {
				t.Fatal("a refused bundle changed the lock")
			}
			if left, _ := filepath.Glob(filepath.Join(o.CacheDir, "sha256", "*")); len(left) > 0 && f.name == "a .deb with other bytes" {
				for _, p := range left {
					if filepath.Base(p) == files[0].SHA256 {
						t.Fatal("the wrong .deb reached the package cache")
					}
				}
			}
		})
	}

	offline.CacheDir = t.TempDir()
	res2, err := images.BuildFromBundle(ctx, eng2, spec, bundle, offline)
	if err != nil {
		t.Fatalf("build from the bundle on a second engine: %v", err)
	}
	if res2.Tag != l.Tag() || !res2.Built {
		t.Fatalf("built %+v from the bundle, want a build of %s", res2, l.Tag())
	}
	// The same bundle through a registry: pushed (the base by digest, the
	// artifact by tag), then taken by its reference on the second engine,
	// which has lost its base tag and gets an empty package cache: the base
	// comes back from the registry, every file arrives checked, and the
	// image, already there, is not built again.
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	pushed, err := images.PushBundle(ctx, eng, l, images.Cache{Dir: opts.CacheDir}, strings.TrimPrefix(reg.URL, "http://")+"/spawnd/bundles")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pushed the bundle as %s", pushed)
	if _, err := testenv.Client(eng2).ImageRemove(ctx, base, client.ImageRemoveOptions{}); err != nil {
		t.Fatal(err)
	}
	viaRegistry := images.Options{Network: "none", CacheDir: t.TempDir()}
	res3, err := images.BuildFromBundle(ctx, eng2, spec, pushed, viaRegistry)
	if err != nil {
		t.Fatalf("build from the registry bundle: %v", err)
	}
	if res3.Built || res3.Tag != l.Tag() {
		t.Fatalf("build from the registry bundle: %+v, want the existing %s", res3, l.Tag())
	}
	if info, err := eng2.ImageInspect(ctx, base); err != nil || info.ID != l.Base.Digest {
		t.Fatalf("the base did not come back from the registry: %v %+v", err, info)
	}
	if m := (images.Cache{Dir: viaRegistry.CacheDir}).Missing(files); len(m) != 0 {
		t.Fatalf("%d files did not arrive from the registry (first %s)", len(m), m[0])
	}
	if _, err := images.BuildFromBundle(ctx, eng2, spec, strings.TrimPrefix(reg.URL, "http://")+"/spawnd/bundles:absent", viaRegistry); err == nil || !strings.Contains(err.Error(), "bundle ") {
		t.Fatalf("a bundle reference that does not exist: %v", err)
	}

	var ids, manifests []string
	var built []v1.Image
	for i, e := range []*docker.Engine{eng, eng2} {
		img, err := e.Image(ctx, l.Tag())
		if err != nil {
			t.Fatal(err)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		id, err := img.ConfigName()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("engine %d: image %s, manifest %s", i+1, id, d)
		ids, manifests, built = append(ids, id.String()), append(manifests, d.String()), append(built, img)
	}
	if ids[0] != ids[1] || manifests[0] != manifests[1] {
		diff, err := images.Differences(built[0], built[1])
		t.Logf("what differs (%v): %v", err, diff)
	}
	if ids[0] != ids[1] {
		t.Errorf("one lock, two engines: image IDs %s and %s", ids[0], ids[1])
	}
	if manifests[0] != manifests[1] {
		t.Errorf("one lock, two engines: manifest digests %s and %s", manifests[0], manifests[1])
	}
	if got, _ := envs.ReadLock(envs.LockPath(spec)); got == nil || got.Digest != l.Digest {
		t.Errorf("the lock changed under the builds")
	}

	// spawnd verify: a rebuild in a scratch engine (docker.StartScratch: an
	// empty store, no network) gives the same image...
	sc, err := docker.StartScratch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	v, err := images.Verify(ctx, eng, sc, spec, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !v.Identical || v.RebuiltID != ids[0] {
		t.Fatalf("verify in a scratch engine: %+v, want identical to %s", v, ids[0])
	}
	// ...and an image under the lock's tag that is not the lock's is found
	// out (rebuilt on the same engine, --same-engine).
	if _, err := testenv.Client(eng2).ImageTag(ctx, client.ImageTagOptions{Source: l.Base.Digest, Target: l.Tag()}); err != nil {
		t.Fatal(err)
	}
	v, err = images.Verify(ctx, eng2, eng2, spec, opts)
	if err != nil {
		t.Fatal(err)
	}
	if v.Identical || len(v.Differences) == 0 || v.Differences[0] != "config" {
		t.Fatalf("verify of a wrong image under the lock's tag: %+v", v)
	}
	for _, e := range []interface {
		CheckImage(context.Context, string) error
	}{eng, eng2, sc} {
		if err := e.CheckImage(ctx, "spawnd-verify/"+env+":"+l.ShortDigest()); err == nil {
			t.Error("verify left its scratch image")
		}
	}
}

// TestMakeBaseIsReproducible: scripts/make-base, run twice, makes the same
// base image ID (mmdebstrap with a fixed SOURCE_DATE_EPOCH, imported with no
// time of its own).
func TestMakeBaseIsReproducible(t *testing.T) {
	eng := testenv.Engine(t)
	root := testenv.RepoRoot(t)
	var ids []string
	for _, tag := range []string{"spawnd-test/base-repro-a:1", "spawnd-test/base-repro-b:1"} {
		t.Cleanup(func() { _ = eng.RemoveImage(context.Background(), tag) })
		cmd := exec.Command(filepath.Join(root, "scripts", "make-base"), tag)
		cmd.Dir, cmd.Env = root, append(os.Environ(), "FORCE=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("make-base %s: %v\n%s", tag, err, out)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		info, err := eng.ImageInspect(ctx, tag)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, info.ID)
	}
	if ids[0] != ids[1] {
		t.Fatalf("make-base twice: %s and %s", ids[0], ids[1])
	}
}

func rm(t *testing.T, p string) {
	t.Helper()
	if err := os.RemoveAll(p); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}
