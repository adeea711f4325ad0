package main

import (
	"strings"
	"testing"

	"github.com/spawnd/spawnd/api"
)

func TestPrintEnvs(t *testing.T) {
	rep := api.EnvReport{Envs: []api.EnvDrift{
		{Env: "team", Configured: true, LockDigest: "sha256:aaaaaaaaaaaa1111", Image: "spawnd/team:aaaaaaaaaaaa", ImageSize: 800 << 20,
			Built: "2026-11-01T10:00:00Z", Current: 1, Older: 2, Locks: []api.LockServers{
				{LockDigest: "sha256:aaaaaaaaaaaa1111", Current: true, Servers: []api.ServerRef{{User: "ann"}}},
				{LockDigest: "sha256:bbbbbbbbbbbb2222", Image: "spawnd/team:bbbbbbbbbbbb", Servers: []api.ServerRef{{User: "bob"}, {User: "cy", Server: "gpu"}}},
			}},
		{Env: "gone", LockDigest: "", Older: 1, Locks: []api.LockServers{{LockDigest: "sha256:cccccccccccc", Servers: []api.ServerRef{{User: "dee"}}}}},
	}}
	var b strings.Builder
	pools := []api.Pool{{Name: "team/default", Env: "team", Profile: "default", Want: 60, Ready: 58}, {Name: "team/big", Env: "team", Profile: "big", Cold: "not python"}}
	if err := printEnvs(&b, rep, pools); err != nil {
		t.Fatal(err)
	}
	got := b.String()
	for _, want := range []string{
		"team  ", "aaaaaaaaaaaa", "800 MiB", "2026-11-01T10:00:00Z",
		"older", "bbbbbbbbbbbb", "2: bob, cy/gpu",
		"gone (not configured)", "1: dee", "58/60, cold",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("spawnd envs output lacks %q:\n%s", want, got)
		}
	}
}
