package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/daemon"
	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/internal/testenv"
)

// TestRolloutIdleServersThroughJupyterHub: three users' servers run an
// env through a real JupyterHub 6 and spawnd, which reads the hub's
// activity with a token of a hub service that may read only that
// (list:users, read:users:activity, read:servers). The env moves on to a
// new lock; two servers have been idle for a while, the third was just
// active (its activity posted to the hub). `rollout --idle` moves exactly
// the idle two (a dry run first moves nobody); the hub sees them stopped;
// the next start through the hub runs the new lock and its progress on the
// spawn page says the env was updated. --users moves the third; then no
// server is on an older lock.
func TestRolloutIdleServersThroughJupyterHub(t *testing.T) {
	venv := testenv.HubVenv(t, 6)
	eng := testenv.Engine(t)
	testenv.EnsureDebianBase(t, eng)
	w := newWorld(t, eng, hubEnvSpec(6), venv)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	var env, spec string
	for name, e := range w.cfg.Envs {
		env, spec = name, e.Spec
	}
	activityToken := randHex(16)
	w.extraHubConfig = fmt.Sprintf(`
c.JupyterHub.services.append({"name": "spawnd-activity", "api_token": %q})
c.JupyterHub.load_roles.append({"name": "spawnd-activity", "services": ["spawnd-activity"],
    "scopes": ["list:users", "read:users:activity", "read:servers"]})
`, activityToken)
	w.stopDaemon()
	w.cfg.Hub = daemon.HubConfig{URL: fmt.Sprintf("http://127.0.0.1:%d/hub/api", w.proxyPort), Token: activityToken}
	w.startDaemon()
	c, _ := api.NewClient(w.spawndAddr, w.cfg.Token)
	opts, err := c.Options(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w.startHub(opts.Network.Gateway)
	defer w.stopHub()

	users := []string{"ro1", "ro2", "ro3"}
	for _, u := range users {
		if code := w.hubAPI("POST", "/users/"+u, nil, nil); code != 201 {
			t.Fatalf("creating %s: %d", u, code)
		}
		if code := w.hubAPI("POST", "/users/"+u+"/server", nil, nil); code != 201 && code != 202 {
			t.Fatalf("starting %s: %d", u, code)
		}
	}
	for _, u := range users {
		w.waitReady(u, "")
	}

	// The env moves on: a new lock (its description changed) whose image is there.
	old, err := envs.ReadLock(envs.LockPath(spec))
	if err != nil {
		t.Fatal(err)
	}
	next := *old
	next.Description += " (updated)"
	next.Seal()
	if _, err := testenv.Client(eng).ImageTag(ctx, client.ImageTagOptions{Source: old.Tag(), Target: next.Tag()}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = testenv.Client(eng).ImageRemove(context.Background(), next.Tag(), client.ImageRemoveOptions{})
	})
	if err := envs.WriteLock(envs.LockPath(spec), &next); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(envs.LockPath(spec)) })
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		rep, err := c.Envs(ctx)
		if err == nil && len(rep.Envs) > 0 && rep.Envs[0].LockDigest == next.Digest {
			if rep.Envs[0].Older != 3 {
				t.Fatalf("after the new lock: %+v; want the three servers on the older lock", rep.Envs[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon did not switch to the new lock within 30 s: %+v %v", rep, err)
		}
	}

	// ro1 and ro2 idle for 15 s by the hub's record of their activity (it
	// only grows), ro3 active now: a rollout of servers idle 10 s moves the
	// first two.
	lastActivity := func(u string) time.Time {
		var m struct {
			Servers map[string]struct {
				LastActivity time.Time `json:"last_activity"`
			} `json:"servers"`
		}
		w.hubAPI("GET", "/users/"+u, nil, &m)
		return m.Servers[""].LastActivity
	}
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(time.Second) {
		if time.Since(lastActivity("ro1")) > 15*time.Second && time.Since(lastActivity("ro2")) > 15*time.Second {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ro1 and ro2 stayed active for 3 min by the hub (%v, %v)", lastActivity("ro1"), lastActivity("ro2"))
		}
	}
	now := time.Now().UTC().Format("2006-01-02T15:04:05.000000Z")
	if code := w.hubAPI("POST", "/users/ro3/activity", map[string]any{"last_activity": now, "servers": map[string]any{"": map[string]any{"last_activity": now}}}, nil); code != 200 && code != 204 {
		t.Fatalf("posting ro3's activity: %d", code)
	}

	moved := func(r api.RolloutResult) []string {
		var out []string
		for _, it := range r.Items {
			if it.Moved {
				out = append(out, it.User)
			}
		}
		return out
	}
	dry, err := c.Rollout(ctx, env, api.RolloutRequest{IdleSeconds: 10, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("dry run: %+v", dry.Items)
	if len(moved(dry)) != 0 || len(dry.Items) != 3 {
		t.Fatalf("the dry run: %+v; want three servers looked at, none moved", dry.Items)
	}
	for _, it := range dry.Items {
		if want := it.User != "ro3"; strings.HasPrefix(it.Why, "would move") != want {
			t.Errorf("dry run, %s: %q", it.User, it.Why)
		}
	}
	res, err := c.Rollout(ctx, env, api.RolloutRequest{IdleSeconds: 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rollout: %+v", res.Items)
	if got := strings.Join(moved(res), ","); got != "ro1,ro2" {
		t.Fatalf("the rollout moved %q; want ro1,ro2 (ro3 was active)", got)
	}
	w.waitStopped("ro1", "")
	w.waitStopped("ro2", "")
	if s, err := c.Status(ctx, "ro3", ""); err != nil || s.State != api.StateRunning || s.LockDigest != old.Digest {
		t.Fatalf("ro3 after the rollout: %+v %v; want still running its lock", s, err)
	}

	// ro1's next start through the hub: the new lock, and the spawn page says why.
	if code := w.hubAPI("POST", "/users/ro1/server", nil, nil); code != 201 && code != 202 {
		t.Fatalf("restarting ro1: %d", code)
	}
	events := w.progress("ro1", "") // the hub replays the pending start's progress from its first event
	w.waitReady("ro1", "")
	var msgs []string
	for _, ev := range <-events {
		msgs = append(msgs, ev.Message)
	}
	if !strings.Contains(strings.Join(msgs, "|"), "was updated while you were away") {
		var own []string
		_ = c.Progress(ctx, "ro1", "", func(ev api.ProgressEvent) error { own = append(own, ev.Message); return nil })
		t.Errorf("ro1's spawn page said %q (spawnd's own stream: %q); want the notice that the env was updated\n%s", msgs, own, w.logTail())
	}
	if s, err := c.Status(ctx, "ro1", ""); err != nil || s.LockDigest != next.Digest {
		t.Errorf("ro1 after its restart: %+v %v; want the new lock", s, err)
	}

	res, err = c.Rollout(ctx, env, api.RolloutRequest{Users: []string{"ro3"}})
	if err != nil || strings.Join(moved(res), ",") != "ro3" {
		t.Fatalf("rollout --users ro3: %+v %v", res, err)
	}
	w.waitStopped("ro3", "")
	rep, err := c.Envs(ctx)
	if err != nil || rep.Envs[0].Older != 0 {
		t.Fatalf("after the rollouts: %+v %v; want no server on an older lock", rep, err)
	}
}
