package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/internal/testenv"
)

// TestImagePushUsesTheKeychain: spawnd image push sends the Docker
// keychain's credentials (DOCKER_CONFIG) to a password-protected registry
// (Debian's docker-registry) and prints the reference by digest; with no
// credentials the registry's refusal is the error.
func TestImagePushUsesTheKeychain(t *testing.T) {
	eng := testenv.Engine(t)
	busybox := testenv.EnsureBusybox(t, eng)
	reg := testenv.NewLocalRegistry(t, "pusher", "push-pass-123")
	dir := t.TempDir()
	spec := filepath.Join(dir, "pushtest.yaml")
	if err := os.WriteFile(spec, []byte("name: pushtest\nbase: x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l := &envs.Lock{Env: "pushtest-" + testenv.Instance(t, eng), SpecChecksum: "sha256:x", Base: envs.Base{Ref: "x", Digest: "sha256:x"}}
	l.Seal()
	if err := envs.WriteLock(envs.LockPath(spec), l); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := testenv.Client(eng).ImageTag(ctx, client.ImageTagOptions{Source: busybox, Target: l.Tag()}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = testenv.Client(eng).ImageRemove(context.Background(), l.Tag(), client.ImageRemoveOptions{})
	})
	push := func() (string, error) {
		root := newRoot()
		var out, errOut bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&errOut)
		root.SetArgs([]string{"image", "push", spec, reg})
		err := root.ExecuteContext(ctx)
		return out.String() + errOut.String(), err
	}
	testenv.UseDockerConfig(t, reg, "", "") // no credentials
	if out, err := push(); err == nil || !strings.Contains(strings.ToLower(out+err.Error()), "unauthorized") {
		t.Fatalf("a push with no credentials: %v %q; want the registry's refusal", err, out)
	}
	testenv.UseDockerConfig(t, reg, "pusher", "push-pass-123")
	out, err := push()
	if err != nil {
		t.Fatalf("a push with the keychain's credentials: %v %s", err, out)
	}
	if want := reg + "/spawnd/" + l.Env + "@sha256:"; !strings.HasPrefix(strings.TrimSpace(out), want) {
		t.Fatalf("spawnd image push printed %q; want %s…", out, want)
	}
}
