package images_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/labels"
)

// TestWheelForAnotherPlatformIsAClearError: a package whose index holds
// only a wheel for another platform fails the lock with an error that names
// the spec line and quotes pip; no lock and no image are made.
func TestWheelForAnotherPlatformIsAClearError(t *testing.T) {
	eng := testenv.Engine(t)
	base := testenv.EnsureDebianBase(t, eng)
	env := testEnvName(t, eng, "itest")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ix := testenv.NewIndex(t)
	ix.AddTagged("spawndtestp", "1.0", "cp311-cp311-manylinux_2_17_s390x")
	spec := filepath.Join(t.TempDir(), env+".yaml")
	writeSpec(t, spec, env, base, ix.URL, "spawndtestp")

	_, err := images.Build(ctx, eng, spec, images.Options{Network: "host"})
	if err == nil {
		t.Fatal("a package with no wheel for this platform was locked and built")
	}
	for _, want := range []string{`pip.packages[0]`, `could not resolve "spawndtestp"`, "No matching distribution"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q:\n%v", want, err)
		}
	}
	if _, err := os.Stat(envs.LockPath(spec)); !os.IsNotExist(err) {
		t.Errorf("a lock was written (%v)", err)
	}
	f := client.Filters{}
	f.Add("label", labels.Env+"="+env)
	f.Add("dangling", "false")
	res, err := testenv.Client(eng).ImageList(ctx, client.ImageListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, im := range res.Items {
		if im.Labels[labels.Stage] == "" { // the lock's own apt stage stays, as a cache for the next lock
			t.Errorf("an image of the env after the failed build: %v", im.RepoTags)
		}
	}
}
