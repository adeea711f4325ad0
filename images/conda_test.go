package images_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
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
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/docker"
)

// condaTestChannel serves spawnd-hello 1.0 and 2.0 (a script that prints
// its version and the prefix it was installed for) and spawnd-dep 1.0,
// which spawnd-hello depends on.
func condaTestChannel(t *testing.T) *testenv.CondaChannel {
	hello := func(v string) testenv.CondaPackage {
		return testenv.CondaPackage{Name: "spawnd-hello", Version: v, Depends: []string{"spawnd-dep >=1"}, Files: map[string]testenv.CondaFile{
			"bin/spawnd-hello": {Text: "#!/bin/sh\necho spawnd-hello " + v + " prefix=" + testenv.CondaPlaceholder + "\ncat " + testenv.CondaPlaceholder + "/share/spawnd-dep/README\n", Exec: true},
		}}
	}
	return testenv.NewCondaChannel(t, hello("1.0"), hello("2.0"), testenv.CondaPackage{Name: "spawnd-dep", Version: "1.0",
		Files: map[string]testenv.CondaFile{"share/spawnd-dep/README": {Text: "spawnd-dep 1.0 is here\n"}}})
}

func writeCondaSpec(t *testing.T, path, env, base, channel string, pkgs ...string) {
	t.Helper()
	quoted := make([]string, len(pkgs))
	for i, p := range pkgs {
		quoted[i] = fmt.Sprintf("%q", p)
	}
	body := fmt.Sprintf("name: %s\nbase: %s\nconda:\n  channels: [%q]\n  packages: [%s]\njupyter:\n  cmd: [/opt/conda/bin/spawnd-hello]\n",
		env, base, channel, strings.Join(quoted, ", "))
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// envImages are the env's images other than its lock stage.
func envImages(t *testing.T, ctx context.Context, eng *docker.Engine, env string) []string {
	t.Helper()
	f := client.Filters{}
	f.Add("label", labels.Env+"="+env)
	res, err := testenv.Client(eng).ImageList(ctx, client.ImageListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, im := range res.Items {
		if im.Labels[labels.Stage] == "" {
			out = append(out, im.ID)
		}
	}
	return out
}

// TestCondaFromALocalChannel: a spec's conda packages are solved with
// py-rattler against a channel the test makes (conda-package-handling,
// indexed by py-rattler) and serves on 127.0.0.1: the lock names every
// package, dependencies included, by URL and SHA-256; the image runs the
// package from /opt/conda with /opt/conda written into it; its conda-meta
// names the channel's URLs and no host path. Made again from an empty cache
// with no build cache, the image is the same image. A pin picks the older
// version.
func TestCondaFromALocalChannel(t *testing.T) {
	eng := testenv.Engine(t)
	base := testenv.EnsureDebianBase(t, eng)
	py := testenv.CondaPython(t)
	ch := condaTestChannel(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	env := testEnvName(t, eng, "itest-conda")
	spec := filepath.Join(t.TempDir(), env+".yaml")
	writeCondaSpec(t, spec, env, base, ch.URL, "spawnd-hello")
	opts := images.Options{CacheDir: t.TempDir(), CondaPython: py}
	res, err := images.Build(ctx, eng, spec, opts)
	if err != nil {
		t.Fatal(err)
	}
	l := res.Lock
	if l.Conda == nil || l.Conda.Platform == "" || len(l.Conda.Packages) != 2 {
		t.Fatalf("conda lock: %+v", l.Conda)
	}
	for i, want := range []struct{ name, version, file string }{
		{"spawnd-dep", "1.0", "spawnd-dep-1.0-0.conda"}, {"spawnd-hello", "2.0", "spawnd-hello-2.0-0.conda"},
	} {
		p := l.Conda.Packages[i]
		if p.Name != want.name || p.Version != want.version || p.URL != ch.URL+"noarch/"+want.file || p.SHA256 != fileSHA256(t, ch.File(want.file)) {
			t.Errorf("locked %+v, want %s %s at %snoarch/%s with the file's sha256", p, want.name, want.version, ch.URL, want.file)
		}
	}
	run, err := eng.RunCapture(ctx, backend.RunSpec{Image: res.Tag, Network: "none", Cmd: []string{"sh", "-c",
		`spawnd-hello; stat -c '%a %u %n' /opt/conda/conda-meta/spawnd-hello-2.0-0.json /opt/conda/bin/spawnd-hello; cat /opt/conda/conda-meta/spawnd-hello-2.0-0.json; test -f /opt/conda/conda-meta/history && echo history-kept`}})
	if err != nil {
		t.Fatal(err)
	}
	out := string(run.Stdout)
	for _, want := range []string{"spawnd-hello 2.0 prefix=/opt/conda\n", "spawnd-dep 1.0 is here",
		"644 0 /opt/conda/conda-meta/spawnd-hello-2.0-0.json\n", "755 0 /opt/conda/bin/spawnd-hello\n",
		`"url": "` + ch.URL + `noarch/spawnd-hello-2.0-0.conda"`, "history-kept"} {
		if !strings.Contains(out, want) {
			t.Errorf("the image's output lacks %q:\n%s%s", want, out, run.Stderr)
		}
	}
	for _, leak := range []string{opts.CacheDir, "/tmp/", "file://", "extracted_package_dir"} {
		if strings.Contains(out, leak) {
			t.Errorf("the image's conda-meta names %q:\n%s", leak, out)
		}
	}

	// The same lock, from an empty package cache and no build cache: the
	// same image.
	testenv.RemoveImages(eng, labels.Env, env)
	again, err := images.Build(ctx, eng, spec, images.Options{CacheDir: t.TempDir(), CondaPython: py, NoCache: true})
	if err != nil {
		t.Fatal(err)
	}
	if !again.Built || again.ImageID != res.ImageID {
		t.Errorf("rebuilt from the same lock: built %v, image %s; first %s", again.Built, again.ImageID, res.ImageID)
	}

	// From a bundle, with the channel gone: the same image.
	bundle := filepath.Join(t.TempDir(), "bundle")
	if err := images.WriteBundle(ctx, eng, l, images.Cache{Dir: opts.CacheDir}, bundle); err != nil {
		t.Fatal(err)
	}
	testenv.RemoveImages(eng, labels.Env, env)
	ch.Close()
	fromBundle, err := images.BuildFromBundle(ctx, eng, spec, bundle, images.Options{CacheDir: t.TempDir(), CondaPython: py})
	if err != nil {
		t.Fatal(err)
	}
	if fromBundle.ImageID != res.ImageID {
		t.Errorf("built from a bundle with the channel down: image %s; first %s", fromBundle.ImageID, res.ImageID)
	}

	ch = condaTestChannel(t)
	pinned := testEnvName(t, eng, "itest-conda")
	pspec := filepath.Join(t.TempDir(), pinned+".yaml")
	writeCondaSpec(t, pspec, pinned, base, ch.URL, "spawnd-hello=1.0")
	pres, err := images.Lock(ctx, eng, mustLoad(t, pspec), images.Options{CacheDir: opts.CacheDir, CondaPython: py})
	if err != nil {
		t.Fatal(err)
	}
	if got := pres.Conda.Packages[1]; got.Name != "spawnd-hello" || got.Version != "1.0" {
		t.Errorf("spawnd-hello=1.0 locked %+v", got)
	}
}

// TestCondaFaultsAreClearErrors: a package the channel lacks, a channel
// that is down, no py-rattler, and a package whose bytes changed after the
// lock was made: each an error that names the package, channel or fix; no
// lock is written, no image is made, and an existing lock is left as it was.
func TestCondaFaultsAreClearErrors(t *testing.T) {
	eng := testenv.Engine(t)
	base := testenv.EnsureDebianBase(t, eng)
	py := testenv.CondaPython(t)

	for _, c := range []struct {
		name string
		ask  string
		down bool
		py   string
		want []string
	}{
		{"a package the channel lacks", "spawnd-nosuch", false, py, []string{"conda.packages[0]", `no package "spawnd-nosuch"`}},
		{"a channel that is down", "spawnd-hello", true, py, []string{"conda.channels", "could not be read"}},
		{"no py-rattler", "spawnd-hello", false, "/nonexistent/python", []string{"scripts/rattler-venv", "SPAWND_CONDA_PYTHON"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			ch := condaTestChannel(t)
			if c.down {
				ch.Close()
			}
			env := testEnvName(t, eng, "itest-conda")
			spec := filepath.Join(t.TempDir(), env+".yaml")
			writeCondaSpec(t, spec, env, base, ch.URL, c.ask)
			_, err := images.Build(ctx, eng, spec, images.Options{CacheDir: t.TempDir(), CondaPython: c.py})
			if err == nil {
				t.Fatalf("%s: locked and built", c.name)
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
			if ims := envImages(t, ctx, eng, env); len(ims) > 0 {
				t.Errorf("images of the env after the failed build: %v", ims)
			}
		})
	}

	t.Run("a package changed after the lock", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		ch := condaTestChannel(t)
		env := testEnvName(t, eng, "itest-conda")
		spec := filepath.Join(t.TempDir(), env+".yaml")
		writeCondaSpec(t, spec, env, base, ch.URL, "spawnd-hello")
		l, err := images.Lock(ctx, eng, mustLoad(t, spec), images.Options{CacheDir: t.TempDir(), CondaPython: py})
		if err != nil {
			t.Fatal(err)
		}
		if err := envs.WriteLock(envs.LockPath(spec), l); err != nil {
			t.Fatal(err)
		}
		before, _ := os.ReadFile(envs.LockPath(spec))
		if err := os.WriteFile(ch.File("spawnd-dep-1.0-0.conda"), []byte("not the package the lock names"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err = images.Build(ctx, eng, spec, images.Options{CacheDir: t.TempDir(), CondaPython: py})
		var mismatch *images.HashMismatchError
		if !errors.As(err, &mismatch) || mismatch.File.Name != "spawnd-dep" || !strings.Contains(err.Error(), "conda package spawnd-dep 1.0") {
			t.Fatalf("a changed package: %v", err)
		}
		t.Logf("refused: %v", err)
		if after, _ := os.ReadFile(envs.LockPath(spec)); !bytes.Equal(before, after) {
			t.Error("the lock changed")
		}
		if ims := envImages(t, ctx, eng, env); len(ims) > 0 {
			t.Errorf("images of the env after the failed build: %v", ims)
		}
	})
}

// TestCondaChannelBehindAPrivateCA: a channel served over HTTPS with a
// certificate of a CA the machine does not trust (as behind a company's
// TLS-intercepting proxy) is refused with an error that names the
// channels; given the CA as extra certificates (SPAWND_BUILD_CA_CERTS,
// --ca-cert), the lock, the download and the build succeed.
func TestCondaChannelBehindAPrivateCA(t *testing.T) {
	eng := testenv.Engine(t)
	base := testenv.EnsureDebianBase(t, eng)
	py := testenv.CondaPython(t)
	ca := testenv.NewTestCA(t)
	ch := testenv.NewCondaChannelTLS(t, ca, testenv.CondaPackage{Name: "spawnd-dep", Version: "1.0",
		Files: map[string]testenv.CondaFile{"share/spawnd-dep/README": {Text: "spawnd-dep 1.0 is here\n"}}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	env := testEnvName(t, eng, "itest-conda")
	spec := filepath.Join(t.TempDir(), env+".yaml")
	writeCondaSpec(t, spec, env, base, ch.URL, "spawnd-dep")

	_, err := images.Build(ctx, eng, spec, images.Options{CacheDir: t.TempDir(), CondaPython: py})
	if err == nil || !strings.Contains(err.Error(), "conda.channels") || !strings.Contains(err.Error(), "does not trust") {
		t.Fatalf("a channel with an untrusted certificate: %v", err)
	}
	t.Logf("refused: %v", err)
	if _, err := os.Stat(envs.LockPath(spec)); !os.IsNotExist(err) {
		t.Errorf("a lock was written (%v)", err)
	}

	res, err := images.Build(ctx, eng, spec, images.Options{CacheDir: t.TempDir(), CondaPython: py, CACerts: ca.PEM})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Lock.Conda.Packages) != 1 || !strings.HasPrefix(res.Lock.Conda.Packages[0].URL, "https://127.0.0.1:") {
		t.Fatalf("locked %+v", res.Lock.Conda)
	}
	run, err := eng.RunCapture(ctx, backend.RunSpec{Image: res.Tag, Network: "none", Cmd: []string{"cat", "/opt/conda/share/spawnd-dep/README"}})
	if err != nil || !strings.Contains(string(run.Stdout), "spawnd-dep 1.0 is here") {
		t.Fatalf("the image: %v %s%s", err, run.Stdout, run.Stderr)
	}
}
