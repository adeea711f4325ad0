package daemon_test

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd"
)

// TestImageEnvPulledWithTheKeychain: an image env whose image is only in a
// password-protected registry (Debian's docker-registry with htpasswd) is
// pulled by its first start, with the daemon user's Docker credentials,
// and the spawn page shows the pull; with wrong credentials and pull:
// always, the start fails saying the image could not be pulled and leaves
// no container; pull: never with a missing image is refused with what to do.
func TestImageEnvPulledWithTheKeychain(t *testing.T) {
	eng := testenv.Engine(t)
	busybox := testenv.EnsureBusybox(t, eng)
	reg := testenv.NewLocalRegistry(t, "puller", "s3cret-pass-123")
	cfg := testConfig(t, eng)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ref := reg + "/spawnd-test/busybox-" + cfg.Instance + ":1"
	bb, err := eng.Image(ctx, busybox)
	if err != nil {
		t.Fatal(err)
	}
	// A layer of its own (1 MiB of random bytes), so that the engine has
	// something to download and report.
	layer, err := random.Layer(1<<20, types.DockerLayer)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(bb, layer)
	if err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, remote.WithContext(ctx), remote.WithAuth(&authn.Basic{Username: "puller", Password: "s3cret-pass-123"})); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = testenv.Client(eng).ImageRemove(context.Background(), ref, client.ImageRemoveOptions{Force: true})
	})
	if err := eng.CheckImage(ctx, ref); err == nil {
		t.Fatalf("%s is on the engine before the test pulls it", ref)
	}
	testenv.UseDockerConfig(t, reg, "puller", "s3cret-pass-123")
	user := spawnd.EnvUser{Name: "jovyan", UID: 1000, GID: 100}
	cfg.Envs["pulled"] = spawnd.EnvConfig{Image: ref, LockDigest: "sha256:pulled", User: user}
	cfg.Envs["always"] = spawnd.EnvConfig{Image: ref, LockDigest: "sha256:always", User: user, Pull: spawnd.PullAlways}
	cfg.Envs["never"] = spawnd.EnvConfig{Image: reg + "/spawnd-test/absent:1", LockDigest: "sha256:never", User: user, Pull: spawnd.PullNever}
	cfg.Teams = map[string]spawnd.TeamConfig{"t": {Groups: []string{"g"}, Envs: []string{"pulled", "always", "never"}}}
	h := startDaemon(t, eng, cfg)
	start := func(u, env string) (api.Server, error) {
		return h.client.Start(ctx, u, "", api.StartRequest{Env: env, Groups: []string{"g"}})
	}

	if _, err := start("pia", "pulled"); err != nil {
		t.Fatalf("the first start of the pulled env: %v", err)
	}
	var msgs []string
	_ = h.client.Progress(ctx, "pia", "", func(ev api.ProgressEvent) error { msgs = append(msgs, ev.Message); return nil })
	if all := strings.Join(msgs, "|"); !regexp.MustCompile(`pulling the image, \d+ of \d+ layers`).MatchString(all) || !strings.Contains(all, "image pulled") {
		t.Errorf("the start's progress %q; want the pull in it", msgs)
	}
	if err := eng.CheckImage(ctx, ref); err != nil {
		t.Fatalf("after the start %s is not on the engine: %v", ref, err)
	}

	testenv.UseDockerConfig(t, reg, "puller", "wrong-password")
	_, err = start("quinn", "always")
	if err == nil || !strings.Contains(err.Error(), "could not be pulled") {
		t.Fatalf("a pull with wrong credentials: %v; want a start that says the image could not be pulled", err)
	}
	f := client.Filters{}
	f.Add("label", labels.Instance+"="+cfg.Instance)
	f.Add("label", labels.User+"=quinn")
	if cs, err := testenv.Client(eng).ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f}); err != nil || len(cs.Items) != 0 {
		t.Errorf("the failed start left containers for quinn: %d %v", len(cs.Items), err)
	}
	_, err = start("rae", "never")
	if err == nil || !strings.Contains(err.Error(), "pull policy is never") {
		t.Fatalf("a missing image with pull: never: %v", err)
	}
}
