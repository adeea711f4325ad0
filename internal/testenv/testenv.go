// Package testenv gives integration tests a real Docker engine and the small
// images they run. Without an engine a test is skipped on a developer's
// machine and fails in CI (CI=true): a missing engine is never a silent pass.
// Everything it creates carries the label io.spawnd.test=1.
package testenv

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spawnd/spawnd/internal/ci"
	"github.com/spawnd/spawnd/labels"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/spawnd/docker"
	"github.com/spawnd/spawnd/spawnd/egress"
)

// TestLabel marks everything tests create.
const TestLabel = labels.Test

// BusyboxImage is a tiny image made from Debian's busybox-static: a user
// jovyan (1000:100), a shell, and busybox's httpd as a stand-in single-user
// server.
const BusyboxImage = "spawnd-test/busybox:1"

// Engine returns a connected engine. Without one the test is skipped, or
// fails when CI=true.
func Engine(t testing.TB) *docker.Engine {
	t.Helper()
	Full(t, "a Docker engine")
	eng, err := docker.New("")
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = eng.Ping(ctx)
		cancel()
	}
	if err != nil {
		ci.Skip(t, "no Docker engine: %v (run scripts/engine-up)", err)
	}
	t.Cleanup(func() { eng.Close() })
	return eng
}

var clients sync.Map // engine host -> *client.Client

// Client is a raw engine client for the engine eng speaks to. Tests and the
// benchmarks need one to check what the engine really did (a container's
// flags, what is left after a stop) and to measure the raw floor, so they
// must not go through the backend they are checking. Nothing else outside
// spawnd/docker opens an engine client; TestForbiddenImports keeps it so.
func Client(eng *docker.Engine) *client.Client {
	if c, ok := clients.Load(eng.Host()); ok {
		return c.(*client.Client)
	}
	c, err := client.New(client.FromEnv, client.WithHost(eng.Host()), client.WithAPIVersionNegotiation())
	if err != nil {
		panic(fmt.Sprintf("an engine client for %s: %v", eng.Host(), err)) // only a malformed host fails here
	}
	actual, _ := clients.LoadOrStore(eng.Host(), c)
	return actual.(*client.Client)
}

// Instance returns a fresh spawnd instance name, so that tests never touch
// each other's containers, and removes its containers and network at the end.
func Instance(t testing.TB, eng *docker.Engine) string {
	t.Helper()
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	inst := "t" + hex.EncodeToString(b)
	t.Cleanup(func() { RemoveInstance(eng, inst) })
	return inst
}

// RemoveInstance removes every container and network of a spawnd instance,
// and its egress rules (which outlive a daemon on purpose).
func RemoveInstance(eng *docker.Engine, inst string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cli := Client(eng)
	f := client.Filters{}
	f.Add("label", labels.Instance+"="+inst)
	res, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err == nil {
		for _, c := range res.Items {
			_, _ = cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true})
		}
	}
	nets, err := cli.NetworkList(ctx, client.NetworkListOptions{Filters: f})
	if err == nil {
		for _, n := range nets.Items {
			_, _ = cli.NetworkRemove(ctx, n.ID, client.NetworkRemoveOptions{})
		}
	}
	_ = egress.Remove(ctx, egress.Table(inst))
}

var buildOnce sync.Mutex

// EnsureBusybox builds BusyboxImage if the engine lacks it.
func EnsureBusybox(t testing.TB, eng *docker.Engine) string {
	t.Helper()
	buildOnce.Lock()
	defer buildOnce.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	img, err := BuildBusybox(ctx, eng)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// BuildBusybox builds BusyboxImage from Debian's busybox-static unless the
// engine has it, and returns its name.
func BuildBusybox(ctx context.Context, eng *docker.Engine) (string, error) {
	if err := eng.CheckImage(ctx, BusyboxImage); err == nil {
		return BusyboxImage, nil
	} else if !errdefs.IsNotFound(err) {
		return "", fmt.Errorf("inspecting %s: %w", BusyboxImage, err)
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return "", fmt.Errorf("reading /bin/busybox (install Debian's busybox-static): %w", err)
	}
	files := map[string][]byte{
		"busybox": bb,
		"passwd":  []byte("root:x:0:0:root:/root:/bin/sh\njovyan:x:1000:100:jovyan:/home/jovyan:/bin/sh\nother:x:1001:100:other:/home/other:/bin/sh\n"),
		"group":   []byte("root:x:0:\nusers:x:100:\n"),
		"Dockerfile": []byte(`FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY passwd group /etc/
RUN mkdir -p /tmp /home/jovyan && chmod 1777 /tmp
USER 1000:100
CMD ["/bin/sh", "-c", "exec httpd -f -p 8888 -h \"$HOME\""]
`),
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range []string{"Dockerfile", "busybox", "group", "passwd"} {
		data := files[name]
		mode := int64(0o644)
		if name == "busybox" {
			mode = 0o755
		}
		_ = tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(data)), ModTime: time.Unix(0, 0)})
		_, _ = tw.Write(data)
	}
	_ = tw.Close()
	res, err := Client(eng).ImageBuild(ctx, &buf, client.ImageBuildOptions{
		Tags: []string{BusyboxImage}, Remove: true, ForceRemove: true,
		Labels: map[string]string{TestLabel: "1"},
	})
	if err != nil {
		return "", fmt.Errorf("building %s: %w", BusyboxImage, err)
	}
	out, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if strings.Contains(string(out), `"error"`) {
		return "", fmt.Errorf("building %s: %s", BusyboxImage, out)
	}
	return BusyboxImage, nil
}

// DebianBase is the offline Debian base image that scripts/make-base makes.
const DebianBase = "spawnd/debian:bookworm"

// EnsureDebianBase makes DebianBase with scripts/make-base if the engine
// lacks it (about 30 s; needs root, mmdebstrap and Debian's mirror).
func EnsureDebianBase(t testing.TB, eng *docker.Engine) string {
	t.Helper()
	buildOnce.Lock()
	defer buildOnce.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := eng.CheckImage(ctx, DebianBase); err == nil {
		return DebianBase
	}
	root := RepoRoot(t)
	cmd := exec.Command(filepath.Join(root, "scripts", "make-base"), DebianBase)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("making %s: %v\n%s", DebianBase, err, out)
	}
	return DebianBase
}

// RepoRoot is the directory holding go.mod.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// RemoveImages removes the images that carry label=value (and their tags),
// and first the containers made from them: a test's servers may still run
// when its cleanups do, and the engine keeps an image a running container
// uses even when asked with force (the daemon tests' env images outlived
// two CI runs that way).
func RemoveImages(eng *docker.Engine, label, value string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	f := client.Filters{}
	f.Add("label", label+"="+value)
	res, err := Client(eng).ImageList(ctx, client.ImageListOptions{Filters: f})
	if err != nil {
		return
	}
	for _, img := range res.Items {
		cf := client.Filters{}
		cf.Add("ancestor", img.ID)
		if cs, err := Client(eng).ContainerList(ctx, client.ContainerListOptions{All: true, Filters: cf}); err == nil {
			for _, c := range cs.Items {
				_, _ = Client(eng).ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true})
			}
		}
		_, _ = Client(eng).ImageRemove(ctx, img.ID, client.ImageRemoveOptions{Force: true, PruneChildren: true})
	}
}

// HostCACerts are the extra CA certificates this host trusts
// (/usr/local/share/ca-certificates/*.crt, as scripts/host-ca-files lists
// them): builds that reach PyPI through a TLS-intercepting proxy need them.
func HostCACerts(t testing.TB) []byte {
	t.Helper()
	files, _ := filepath.Glob("/usr/local/share/ca-certificates/*.crt")
	var out []byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(append(out, bytes.TrimSpace(b)...), '\n')
	}
	return out
}

// HubVenv returns the virtualenv of JupyterHub major version v that
// scripts/hub-venvs makes ($HUB_VENVS/jh<v>), with the spawner installed.
func HubVenv(t testing.TB, v int) string {
	Full(t, "a real JupyterHub")
	t.Helper()
	root := os.Getenv("HUB_VENVS")
	if root == "" {
		root = "/var/lib/spawnd-test/hubs"
	}
	dir := filepath.Join(root, fmt.Sprintf("jh%d", v))
	if _, err := os.Stat(filepath.Join(dir, "bin", "jupyterhub")); err != nil {
		ci.Skip(t, "no JupyterHub %d virtualenv at %s (run scripts/hub-venvs)", v, dir)
	}
	return dir
}

// UseDockerConfig points DOCKER_CONFIG (the Docker keychain the daemon and
// CLI read) at a directory of the test's whose config.json holds
// user:password for registry; user "" gives a keychain with no credentials.
func UseDockerConfig(t testing.TB, registry, user, password string) {
	t.Helper()
	dir := t.TempDir()
	cfg := `{"auths": {}}`
	if user != "" {
		auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
		cfg = fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, registry, auth)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dir)
}

// Schemathesis is the path of schemathesis' st command, from the venv
// scripts/hub-venvs makes next to the hubs'.
func Schemathesis(t testing.TB) string {
	t.Helper()
	root := os.Getenv("HUB_VENVS")
	if root == "" {
		root = "/var/lib/spawnd-test/hubs"
	}
	st := filepath.Join(root, "schemathesis", "bin", "st")
	if _, err := os.Stat(st); err != nil {
		ci.Skip(t, "no schemathesis at %s (run scripts/hub-venvs)", st)
	}
	return st
}

// Full skips a test under go test -short (scripts/test quick, the
// edit-test loop, which runs no engine and builds no image) when it needs
// what: the full run (scripts/test, CI) never passes -short, so there it
// always runs.
func Full(t testing.TB, what string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("needs %s: left to the full run (go test -short is the quick tier)", what)
	}
}
