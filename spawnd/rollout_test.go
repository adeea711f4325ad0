package spawnd

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spawnd/spawnd/spawnd/backend/fakebackend"
)

type fixedActivity map[string]time.Time

func (a fixedActivity) Activity(context.Context) (map[string]time.Time, error) { return a, nil }

// TestRollout: servers on an older lock move (are stopped, their next start
// opening with a notice) when idle by the hub's activity, when named, or
// all; a dry run moves nobody; without activity only named or all may move.
func TestRollout(t *testing.T) {
	rt := fakebackend.New()
	rt.SetImage("img:2", "sha256:img2")
	now := time.Now()
	m := newTestManager(t, testConfig(t), rt, WithActivity(fixedActivity{"ann/": now.Add(-2 * time.Hour), "bob/": now.Add(-time.Minute), "dee/": now.Add(-5 * time.Hour)}))
	bare := newTestManager(t, testConfig(t), fakebackend.New()) // no hub activity
	ctx := context.Background()
	for _, u := range []string{"ann", "bob", "cy", "dee"} {
		if _, err := m.Start(ctx, u, "", StartRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	// The env moves on to a new lock; dee starts on it.
	m.envs.mu.Lock()
	e := m.envs.envs["team"]
	e.Image, e.LockDigest = "img:2", "sha256:lock2"
	m.envs.envs["team"] = e
	m.envs.mu.Unlock()
	if _, err := m.Stop(ctx, "dee", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Start(ctx, "dee", "", StartRequest{}); err != nil {
		t.Fatal(err)
	}

	if _, err := bare.Rollout(ctx, "team", RolloutRequest{}); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "hub.url") {
		t.Fatalf("an idle rollout without the hub's activity: %v; want a conflict naming hub.url", err)
	}
	if _, err := m.Rollout(ctx, "nope", RolloutRequest{All: true}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("an unknown env: %v", err)
	}
	running := func() map[string]bool {
		out := map[string]bool{}
		list, _ := m.List()
		for _, s := range list {
			out[s.User] = s.State == StateRunning
		}
		return out
	}
	why := func(r RolloutResult) map[string]string {
		out := map[string]string{}
		for _, it := range r.Items {
			out[it.User] = it.Why
		}
		return out
	}
	for _, tc := range []struct {
		name  string
		req   RolloutRequest
		want  map[string]string // user -> start of Why
		moved []string
	}{
		{"dry run", RolloutRequest{DryRun: true}, map[string]string{"ann": "would move: idle for 2h", "bob": "active 1m", "cy": "the hub reports no activity"}, nil},
		{"idle", RolloutRequest{}, map[string]string{"ann": "idle for 2h", "bob": "active 1m", "cy": "the hub reports no activity"}, []string{"ann"}},
		{"named", RolloutRequest{Users: []string{"cy"}}, map[string]string{"bob": "not among", "cy": "asked for"}, []string{"cy"}},
		{"all", RolloutRequest{All: true}, map[string]string{"bob": "asked for"}, []string{"bob"}},
	} {
		before := running()
		res, err := m.Rollout(ctx, "team", tc.req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got := why(res)
		if len(got) != len(tc.want) {
			t.Errorf("%s: looked at %v; want %v (dee runs the current lock)", tc.name, got, tc.want)
		}
		for u, w := range tc.want {
			if !strings.HasPrefix(got[u], w) {
				t.Errorf("%s: %s: %q; want %q…", tc.name, u, got[u], w)
			}
		}
		after := running()
		for u, was := range before {
			shouldMove := false
			for _, mv := range tc.moved {
				shouldMove = shouldMove || mv == u
			}
			if was && after[u] == shouldMove {
				t.Errorf("%s: %s running %v after; moved should be %v", tc.name, u, after[u], shouldMove)
			}
		}
	}
	// ann's next start runs the current lock and tells her why.
	if _, err := m.Start(ctx, "ann", "", StartRequest{}); err != nil {
		t.Fatal(err)
	}
	var msgs []string
	_ = m.Progress(ctx, "ann", "", func(ev ProgressEvent) error { msgs = append(msgs, ev.Message); return nil })
	if !strings.Contains(strings.Join(msgs, "|"), "Your env team was updated while you were away (lock lock1 → lock2)") {
		t.Errorf("ann's start after the rollout said %q; want the notice", msgs)
	}
	if s, _ := m.Status("ann", ""); s.LockDigest != "sha256:lock2" {
		t.Errorf("ann runs %s after the rollout", s.LockDigest)
	}
}

// TestRolloutResumes: a rollout cut off (its context ends: the daemon stops)
// moves nobody half-way; run again, it moves what is left, from the labels
// alone (it keeps no state of its own).
func TestRolloutResumes(t *testing.T) {
	rt := fakebackend.New()
	rt.SetImage("img:2", "sha256:img2")
	m := newTestManager(t, testConfig(t), rt)
	ctx := context.Background()
	for _, u := range []string{"ann", "bob"} {
		if _, err := m.Start(ctx, u, "", StartRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	m.envs.mu.Lock()
	e := m.envs.envs["team"]
	e.Image, e.LockDigest = "img:2", "sha256:lock2"
	m.envs.envs["team"] = e
	m.envs.mu.Unlock()
	cut, cancel := context.WithCancel(ctx)
	cancel()
	res, err := m.Rollout(cut, "team", RolloutRequest{All: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range res.Items {
		if it.Moved {
			t.Errorf("a rollout cut off before it began moved %s", it.User)
		}
		if s, err := m.Status(it.User, ""); err != nil || s.State != StateRunning {
			t.Errorf("%s after the cut-off rollout: %+v %v; want still running", it.User, s, err)
		}
	}
	res, err = m.Rollout(ctx, "team", RolloutRequest{All: true})
	if err != nil {
		t.Fatal(err)
	}
	moved := 0
	for _, it := range res.Items {
		if it.Moved {
			moved++
		}
	}
	if moved != 2 {
		t.Fatalf("the rollout run again moved %d of 2: %+v", moved, res.Items)
	}
}
