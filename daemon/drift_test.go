package daemon_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd"
)

// TestDriftReportAfterRelock is the drift report on the real engine: a
// server runs an env built from a spec, the env is relocked and rebuilt
// through the API, a second server starts on the new lock; GET /v1/envs
// (spawnd envs) then names the current lock with its image size and time,
// one server on it and the first one on the older lock, ps marks that one
// OUTDATED, and /metrics counts both.
func TestDriftReportAfterRelock(t *testing.T) {
	eng := testenv.Engine(t)
	base := testenv.EnsureDebianBase(t, eng)
	cfg := testConfig(t, eng)
	env := "drift" + cfg.Instance
	spec := filepath.Join(t.TempDir(), env+".yaml")
	write := func(desc string) {
		if err := os.WriteFile(spec, []byte(fmt.Sprintf("name: %s\ndescription: %s\nbase: %s\n", env, desc, base)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("first")
	t.Cleanup(func() { testenv.RemoveImages(eng, labels.Env, env) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := images.Build(ctx, eng, spec, images.Options{}); err != nil {
		t.Fatal(err)
	}
	first, err := envs.ReadLock(envs.LockPath(spec))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Envs[env] = spawnd.EnvConfig{Spec: spec}
	cfg.DefaultEnv = env // a user in no team gets the default env
	cfg.MetricsToken = "metrics-token-0123456789abcdef"
	h := startDaemon(t, eng, cfg)
	// The Debian base has no Jupyter; perl (in perl-base) listens instead.
	listen := api.StartRequest{Env: env, Cmd: []string{"perl", "-MIO::Socket::INET", "-e",
		`$s = IO::Socket::INET->new(LocalPort => 8888, Listen => 5, ReuseAddr => 1) or die; while ($c = $s->accept) { close $c }`}}
	if _, err := h.client.Start(ctx, "ann", "", listen); err != nil {
		t.Fatal(err)
	}

	write("second")
	if err := h.client.BuildEnv(ctx, env, true, func(api.BuildEvent) error { return nil }); err != nil {
		t.Fatal(err)
	}
	second, err := envs.ReadLock(envs.LockPath(spec))
	if err != nil || second.Digest == first.Digest {
		t.Fatalf("the relock left the lock at %s (%v)", first.Digest, err)
	}
	// The daemon switches to a new lock within a second of its image.
	driftOf := func() api.EnvDrift {
		t.Helper()
		rep, err := h.client.Envs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range rep.Envs {
			if e.Env == env {
				return e
			}
		}
		return api.EnvDrift{}
	}
	var d api.EnvDrift
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if d = driftOf(); d.LockDigest == second.Digest {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30 s after the build the report still names lock %s, want %s", d.LockDigest, second.Digest)
		}
	}
	if _, err := h.client.Start(ctx, "bob", "", listen); err != nil {
		t.Fatal(err)
	}
	d = driftOf()
	t.Logf("drift report: %+v", d)
	if !d.Configured || d.Image != second.Tag() || d.ImageSize <= 0 || d.Built != second.Created.UTC().Format(time.RFC3339) {
		t.Errorf("the env's current lock: %+v; want image %s with its size and the lock's time %s", d, second.Tag(), second.Created.UTC().Format(time.RFC3339))
	}
	if d.Current != 1 || d.Older != 1 || len(d.Locks) != 2 {
		t.Fatalf("servers: %d current, %d older, locks %+v; want bob on the current lock and ann on the older one", d.Current, d.Older, d.Locks)
	}
	cur, old := d.Locks[0], d.Locks[1]
	if !cur.Current || cur.LockDigest != second.Digest || len(cur.Servers) != 1 || cur.Servers[0].User != "bob" {
		t.Errorf("the current lock's servers: %+v", cur)
	}
	if old.Current || old.LockDigest != first.Digest || old.Image != first.Tag() || len(old.Servers) != 1 || old.Servers[0].User != "ann" {
		t.Errorf("the older lock's servers: %+v; want ann on %s (%s)", old, first.Digest, first.Tag())
	}
	servers, err := h.client.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range servers {
		if s.Env == env && s.Outdated != (s.User == "ann") {
			t.Errorf("ps: %s outdated=%v", s.User, s.Outdated)
		}
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+h.addr+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+cfg.MetricsToken)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	for _, want := range []string{
		fmt.Sprintf(`spawnd_env_servers{current="true",env=%q,lock_digest=%q} 1`, env, second.Digest),
		fmt.Sprintf(`spawnd_env_servers{current="false",env=%q,lock_digest=%q} 1`, env, first.Digest),
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
