package images_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/spawnd/docker"
)

// TestSameLockSameDigestOnTwoEngines builds one lock on the machine's
// engine and on a private dockerd with its own data root and empty build
// cache, and wants the same image: the same image ID (config digest) and
// the same manifest digest.
func TestSameLockSameDigestOnTwoEngines(t *testing.T) {
	eng := testenv.Engine(t)
	base := testenv.EnsureDebianBase(t, eng)
	own := testenv.StartOwnEngine(t)
	own.LoadImage(t, eng, base)
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
	opts := images.Options{Network: "host"}
	l, _, err := images.LockOrLoad(ctx, eng, mustLoad(t, spec), spec, opts)
	if err != nil {
		t.Fatal(err)
	}

	var ids, manifests []string
	var built []v1.Image
	for i, e := range []*docker.Engine{eng, eng2} {
		res, err := images.Build(ctx, e, spec, opts)
		if err != nil {
			t.Fatalf("engine %d: %v", i+1, err)
		}
		if res.Tag != l.Tag() || !res.Built {
			t.Fatalf("engine %d built %+v, want a build of %s", i+1, res, l.Tag())
		}
		img, err := e.Image(ctx, res.Tag)
		if err != nil {
			t.Fatal(err)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		ids, manifests, built = append(ids, res.ImageID), append(manifests, d.String()), append(built, img)
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

	// spawnd verify: a rebuild without the cache gives the same image...
	v, err := images.Verify(ctx, eng, spec, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !v.Identical || v.RebuiltID != ids[0] {
		t.Fatalf("verify: %+v, want identical to %s", v, ids[0])
	}
	// ...and an image under the lock's tag that is not the lock's is found out.
	if _, err := testenv.Client(eng2).ImageTag(ctx, client.ImageTagOptions{Source: base, Target: l.Tag()}); err != nil {
		t.Fatal(err)
	}
	v, err = images.Verify(ctx, eng2, spec, opts)
	if err != nil {
		t.Fatal(err)
	}
	if v.Identical || len(v.Differences) == 0 || v.Differences[0] != "config" {
		t.Fatalf("verify of a wrong image under the lock's tag: %+v", v)
	}
	for _, e := range []*docker.Engine{eng, eng2} {
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
