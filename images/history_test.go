package images_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/internal/testenv"
)

// TestHistoryAndRollback on the real engine: every build keeps its lock
// and spec in the env's history; a rollback to a digest never built is
// refused and changes nothing; with the old image removed (as a prune
// would), a rollback rebuilds it from the lock, to the same image ID, and
// puts back the lock and the spec it was made from; rolling forward again
// builds nothing.
func TestHistoryAndRollback(t *testing.T) {
	eng := testenv.Engine(t)
	base := testenv.EnsureDebianBase(t, eng)
	env := testEnvName(t, eng, "hist")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	spec := filepath.Join(t.TempDir(), env+".yaml")
	specOf := func(desc string) []byte {
		return []byte(fmt.Sprintf("name: %s\ndescription: %s\nbase: %s\n", env, desc, base))
	}
	if err := os.WriteFile(spec, specOf("first"), 0o644); err != nil {
		t.Fatal(err)
	}
	first, err := images.Build(ctx, eng, spec, images.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(spec, specOf("second"), 0o644); err != nil {
		t.Fatal(err)
	}
	second, err := images.Build(ctx, eng, spec, images.Options{Relock: true})
	if err != nil {
		t.Fatal(err)
	}
	hist, err := envs.History(spec)
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != 2 || hist[0].Lock.Digest != second.Lock.Digest || hist[1].Lock.Digest != first.Lock.Digest ||
		!bytes.Equal(hist[1].Spec, specOf("first")) {
		t.Fatalf("history: %d entries; want the second lock, then the first with its spec", len(hist))
	}

	// A digest never built: refused, nothing changed.
	lockBefore, _ := os.ReadFile(envs.LockPath(spec))
	if _, err := images.Rollback(ctx, eng, spec, "deadbeef", images.Options{}); err == nil || !strings.Contains(err.Error(), "never built") {
		t.Fatalf("rollback to a digest never built: %v", err)
	}
	if b, _ := os.ReadFile(envs.LockPath(spec)); !bytes.Equal(b, lockBefore) {
		t.Fatal("a refused rollback changed the lock")
	}
	if b, _ := os.ReadFile(spec); !bytes.Equal(b, specOf("second")) {
		t.Fatal("a refused rollback changed the spec")
	}

	// The old image is gone, as after a prune: the rollback rebuilds it.
	if _, err := testenv.Client(eng).ImageRemove(ctx, first.Tag, client.ImageRemoveOptions{}); err != nil {
		t.Fatal(err)
	}
	back, err := images.Rollback(ctx, eng, spec, "", images.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !back.Built || back.Tag != first.Tag || back.ImageID != first.ImageID {
		t.Errorf("rollback: built %v, %s %s; want %s rebuilt to the same image %s", back.Built, back.Tag, back.ImageID, first.Tag, first.ImageID)
	}
	if l, err := envs.ReadLock(envs.LockPath(spec)); err != nil || l.Digest != first.Lock.Digest {
		t.Fatalf("the lock after the rollback: %v %v; want %s", l, err, first.Lock.Digest)
	}
	if b, _ := os.ReadFile(spec); !bytes.Equal(b, specOf("first")) {
		t.Fatalf("the spec after the rollback: %q; want the first spec back", b)
	}
	if _, err := images.Rollback(ctx, eng, spec, "", images.Options{}); err == nil || !strings.Contains(err.Error(), "no lock older") {
		t.Fatalf("a second rollback past the oldest lock: %v", err)
	}
	fwd, err := images.Rollback(ctx, eng, spec, second.Lock.Digest[:19], images.Options{})
	if err != nil || fwd.Built || fwd.Tag != second.Tag {
		t.Fatalf("rolling forward to the second lock: %+v %v; want its image as it is, nothing built", fwd, err)
	}
	// The spec and lock agree again: a plain build has nothing to do.
	again, err := images.Build(ctx, eng, spec, images.Options{})
	if err != nil || again.Built || again.Lock.Digest != second.Lock.Digest {
		t.Fatalf("a build after rolling forward: %+v %v; want the second lock, nothing built", again, err)
	}
}
