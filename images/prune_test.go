package images_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/labels"
)

// TestPruneKeepsWhatIsNeeded on the real engine: four locks of an env; the
// first is used by a (stopped) container, the second is the current lock,
// the fourth is the newest. With --keep 1 a dry run removes nothing and
// names the third and what the builds left untagged; the prune then removes
// exactly those, says how much it freed, and every other image is still there. A
// prune while a build holds the build lock is refused.
func TestPruneKeepsWhatIsNeeded(t *testing.T) {
	t.Setenv("SPAWND_BUILD_LOCK", filepath.Join(t.TempDir(), "build.lock")) // this test's builds only
	eng := testenv.Engine(t)
	base := testenv.EnsureDebianBase(t, eng)
	env := testEnvName(t, eng, "prune")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	spec := filepath.Join(t.TempDir(), env+".yaml")
	var built []images.Result
	for i := range 4 {
		if err := os.WriteFile(spec, []byte(fmt.Sprintf("name: %s\ndescription: v%d\nbase: %s\n", env, i, base)), 0o644); err != nil {
			t.Fatal(err)
		}
		res, err := images.Build(ctx, eng, spec, images.Options{Relock: true, Now: func() time.Time { return time.Date(2026, 1, 1+i, 0, 0, 0, 0, time.UTC) }})
		if err != nil {
			t.Fatal(err)
		}
		built = append(built, res)
	}
	cli := testenv.Client(eng)
	c, err := cli.ContainerCreate(ctx, client.ContainerCreateOptions{Name: "spawnd-test-prune-" + env,
		Config: &container.Config{Image: built[0].Tag, Cmd: []string{"true"}, Labels: map[string]string{testenv.TestLabel: "1"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.ContainerRemove(context.Background(), c.ID, client.ContainerRemoveOptions{Force: true})
	opts := images.PruneOptions{Keep: 1, Current: map[string]string{env: built[1].Lock.Digest}, Envs: []string{env}, DryRun: true}

	refs := func(ps []images.PrunedImage) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Ref)
		}
		slices.Sort(out)
		return out
	}
	// What must go: the third lock's image, and what the builds left
	// untagged (their images before normalization), as the engine lists them.
	want := []string{built[2].Tag}
	f := client.Filters{}
	f.Add("label", labels.Env+"="+env)
	f.Add("dangling", "true")
	dangling, err := cli.ImageList(ctx, client.ImageListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, im := range dangling.Items {
		want = append(want, im.ID)
	}
	if err := eng.CheckImage(ctx, "spawnd-lock/"+env+":stage"); err == nil {
		want = append(want, "spawnd-lock/"+env+":stage")
	}
	slices.Sort(want)
	dry, err := images.Prune(ctx, eng, opts)
	if err != nil {
		t.Fatal(err)
	}
	if got := refs(dry.Removed); !slices.Equal(got, want) {
		t.Fatalf("the dry run would remove %v; want %v (kept: %+v)", got, want, dry.Kept)
	}
	for _, r := range append(want, built[0].Tag, built[1].Tag, built[3].Tag) {
		if err := eng.CheckImage(ctx, r); err != nil {
			t.Fatalf("the dry run removed %s: %v", r, err)
		}
	}
	opts.DryRun = false
	res, err := images.Prune(ctx, eng, opts)
	if err != nil {
		t.Fatal(err)
	}
	if got := refs(res.Removed); !slices.Equal(got, want) || res.Freed <= 0 {
		t.Fatalf("the prune removed %v, freed %d; want %v", got, res.Freed, want)
	}
	for _, p := range res.Kept {
		t.Logf("kept %s: %s", p.Ref, p.Why)
	}
	for _, r := range want {
		if err := eng.CheckImage(ctx, r); err == nil {
			t.Errorf("%s is still there", r)
		}
	}
	for i, why := range map[int]string{0: "in use", 1: "current", 3: "newest"} {
		if err := eng.CheckImage(ctx, built[i].Tag); err != nil {
			t.Errorf("the prune removed %s (%s): %v", built[i].Tag, why, err)
		}
	}

	// A build in progress holds the build lock: prune refuses.
	if err := os.WriteFile(spec, []byte(fmt.Sprintf("name: %s\ndescription: v9\nbase: %s\n", env, base)), 0o644); err != nil {
		t.Fatal(err)
	}
	// The build's first progress event holds it (and its lock) until the
	// prune has answered.
	started, proceed := make(chan struct{}), make(chan struct{})
	var once bool
	done := make(chan error, 1)
	go func() {
		_, err := images.Build(ctx, eng, spec, images.Options{Relock: true, Progress: func(ev images.Event) {
			if !once {
				once = true
				close(started)
				<-proceed
			}
		}})
		done <- err
	}()
	<-started
	_, perr := images.Prune(ctx, eng, opts)
	close(proceed)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !errors.Is(perr, images.ErrBuildRunning) {
		t.Fatalf("a prune during a build: %v; want ErrBuildRunning", perr)
	}
}
