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

// TestPipFaultsAreClearErrors: packages the local index serves wrongly fail
// the lock with an error that names the package (and the spec line, where
// pip names it); no lock and no image are made. A yanked release is caught
// by asking the index (bookworm's pip 23.0.1 installs it with only a
// warning and does not mark it in its report).
func TestPipFaultsAreClearErrors(t *testing.T) {
	eng := testenv.Engine(t)
	base := testenv.EnsureDebianBase(t, eng)
	for _, c := range []struct {
		name    string
		publish func(ix *testenv.Index)
		ask     string
		want    []string
	}{
		{"a wheel for another platform only", func(ix *testenv.Index) {
			ix.AddTagged("spawndtestp", "1.0", "cp311-cp311-manylinux_2_17_s390x")
		}, "spawndtestp", []string{`pip.packages[0]`, `could not resolve "spawndtestp"`, "No matching distribution"}},
		{"an index that is down", nil, "spawndtestq", []string{`pip.packages[0]`, `could not resolve "spawndtestq"`, "Connection refused"}},
		{"a yanked release", func(ix *testenv.Index) {
			ix.Add("spawndtesty", "1.0")
			ix.Yank("spawndtesty", "1.0", "corrupts data")
		}, "spawndtesty==1.0", []string{"pip.packages", "spawndtesty 1.0 is a release its index has yanked (corrupts data)", "pin another version of spawndtesty"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			env := testEnvName(t, eng, "itest")
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			index := "http://127.0.0.1:9/simple" // the discard port: nothing listens
			if c.publish != nil {
				ix := testenv.NewIndex(t)
				c.publish(ix)
				index = ix.URL
			}
			spec := filepath.Join(t.TempDir(), env+".yaml")
			writeSpec(t, spec, env, base, index, c.ask)

			_, err := images.Build(ctx, eng, spec, images.Options{Network: "host"})
			if err == nil {
				t.Fatalf("%s was locked and built", c.name)
			}
			t.Logf("refused: %v", err)
			for _, want := range c.want {
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
		})
	}
}
