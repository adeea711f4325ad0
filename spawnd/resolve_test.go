package spawnd

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd/backend"
)

// resolveConfig is a validated config with two envs, two profiles and two
// teams that share a folder target.
func resolveConfig(t *testing.T) *Config {
	t.Helper()
	cfg := &Config{
		Instance:  "unit",
		HomesRoot: "/srv/homes",
		Envs: map[string]EnvConfig{
			"team": {Image: "img:1", LockDigest: "sha256:lock1", User: EnvUser{Name: "jovyan", UID: 1000, GID: 100},
				Cmd: []string{"jupyterhub-singleuser"}, Environment: []string{"TZ=UTC", "LANG=C.UTF-8"}},
			"gpu": {Image: "img:2", User: EnvUser{Name: "jovyan", UID: 1000, GID: 100}},
		},
		Profiles: map[string]ProfileConfig{"default": {Memory: "2g", CPUs: 1}, "large": {Memory: "8g", CPUs: 4}},
		Teams: map[string]TeamConfig{
			"alpha": {Groups: []string{"alpha"}, Envs: []string{"gpu"}, Shared: []SharedFolder{{Source: "/srv/alpha", Target: "/data"}}},
			"beta":  {Groups: []string{"beta"}, Profiles: []string{"large"}, Shared: []SharedFolder{{Source: "/srv/beta", Target: "/data"}, {Source: "/srv/b2", Target: "/b2", ReadOnly: true}}},
		},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestResolveStart(t *testing.T) {
	cfg := resolveConfig(t)
	const tok = "0123456789abcdef0123"
	for _, tc := range []struct {
		name         string
		user, server string
		req          StartRequest
		kind         error // nil: resolves
		wantErr      string
		check        func(t *testing.T, p startPlan)
	}{
		{name: "defaults", user: "alice", check: func(t *testing.T, p startPlan) {
			if p.envName != "team" || p.profileName != "default" || p.env.Image != "img:1" || len(p.shared) != 0 {
				t.Errorf("plan %+v", p)
			}
			if !slices.Equal(p.cmd, []string{"jupyterhub-singleuser"}) {
				t.Errorf("cmd %v", p.cmd)
			}
			if want := []string{"HOME=/home/jovyan", "LANG=C.UTF-8", "TZ=UTC", "USER=jovyan"}; !slices.Equal(p.environment, want) {
				t.Errorf("environment %v, want %v (sorted; the env's own first)", p.environment, want)
			}
		}},
		{name: "request overrides env vars and adds args", user: "alice", server: "lab",
			req: StartRequest{Environment: map[string]string{"TZ": "Europe/Paris", "JUPYTERHUB_API_TOKEN": tok}, Args: []string{"--debug"}},
			check: func(t *testing.T, p startPlan) {
				if !slices.Contains(p.environment, "TZ=Europe/Paris") || slices.Contains(p.environment, "TZ=UTC") {
					t.Errorf("environment %v: the request's TZ must win", p.environment)
				}
				if !slices.Equal(p.cmd, []string{"jupyterhub-singleuser", "--debug"}) {
					t.Errorf("cmd %v", p.cmd)
				}
				if p.tokenHash == "" || strings.Contains(p.tokenHash, tok) || p.key != (key{"alice", "lab"}) {
					t.Errorf("token hash %q key %v", p.tokenHash, p.key)
				}
			}},
		{name: "cmd replaces the env's", user: "alice", req: StartRequest{Cmd: []string{"jupyter", "lab"}, Args: []string{"--x"}}, check: func(t *testing.T, p startPlan) {
			if !slices.Equal(p.cmd, []string{"jupyter", "lab", "--x"}) {
				t.Errorf("cmd %v", p.cmd)
			}
		}},
		{name: "team env", user: "bob", req: StartRequest{Env: "gpu", Groups: []string{"alpha"}}, check: func(t *testing.T, p startPlan) {
			if p.envName != "gpu" || len(p.shared) != 1 || p.shared[0].Source != "/srv/alpha" {
				t.Errorf("plan env %s shared %v", p.envName, p.shared)
			}
		}},
		{name: "two teams on one target: the first by name wins", user: "bob", req: StartRequest{Groups: []string{"beta", "alpha"}}, check: func(t *testing.T, p startPlan) {
			if len(p.shared) != 2 || p.shared[0].Source != "/srv/alpha" || p.shared[1].Target != "/b2" {
				t.Errorf("shared %v", p.shared)
			}
		}},
		{name: "team profile", user: "bob", req: StartRequest{Profile: "large", Groups: []string{"beta"}}, check: func(t *testing.T, p startPlan) {
			if p.profile.MemoryBytes() != 8<<30 {
				t.Errorf("profile %+v", p.profile)
			}
		}},
		{name: "env of another team", user: "bob", req: StartRequest{Env: "gpu"}, kind: ErrForbidden, wantErr: `env "gpu" is not available`},
		{name: "profile of another team", user: "bob", req: StartRequest{Profile: "large", Groups: []string{"alpha"}}, kind: ErrForbidden, wantErr: "large"},
		{name: "unknown env", user: "bob", req: StartRequest{Env: "nope"}, kind: ErrInvalid, wantErr: "choose one of [gpu team]"},
		{name: "unknown profile", user: "bob", req: StartRequest{Profile: "huge"}, kind: ErrInvalid, wantErr: "huge"},
		{name: "empty user", user: "", kind: ErrInvalid, wantErr: "user name is empty"},
		{name: "control character in server", user: "bob", server: "a\x1b", kind: ErrInvalid, wantErr: "control character"},
		{name: "bad group", user: "bob", req: StartRequest{Groups: []string{""}}, kind: ErrInvalid, wantErr: "groups[0]"},
		{name: "too many groups", user: "bob", req: StartRequest{Groups: make([]string, maxGroups+1)}, kind: ErrInvalid, wantErr: "at most 256"},
		{name: "bad variable name", user: "bob", req: StartRequest{Environment: map[string]string{"1A": "x"}}, kind: ErrInvalid, wantErr: "not a valid variable name"},
		{name: "NUL in a value", user: "bob", req: StartRequest{Environment: map[string]string{"A": "x\x00"}}, kind: ErrInvalid, wantErr: "NUL"},
		{name: "NUL in args", user: "bob", req: StartRequest{Args: []string{"a\x00"}}, kind: ErrInvalid, wantErr: "args[0]"},
		{name: "environment too big", user: "bob", req: StartRequest{Environment: map[string]string{"A": strings.Repeat("x", maxEnvBytes)}}, kind: ErrInvalid, wantErr: "bytes"},
		{name: "a long name is bounded in the message", user: "bob", req: StartRequest{Env: strings.Repeat("e", 300)}, kind: ErrInvalid, wantErr: "…"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := resolveStart(cfg, cfg.Envs, tc.user, tc.server, tc.req)
			if tc.kind != nil {
				if !errors.Is(err, tc.kind) || !strings.Contains(Message(err), tc.wantErr) {
					t.Fatalf("err %v, want kind %v saying %q", err, tc.kind, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, p)
		})
	}
}

func TestContainerSpec(t *testing.T) {
	for _, tc := range []struct {
		mode      string
		publishIP string
	}{{"publish", "127.0.0.1"}, {"network", ""}} {
		t.Run(tc.mode, func(t *testing.T) {
			cfg := resolveConfig(t)
			cfg.Network.Mode = tc.mode
			p, err := resolveStart(cfg, cfg.Envs, "Ann@Example.org", "lab", StartRequest{Groups: []string{"beta"}, Profile: "large",
				Environment: map[string]string{"JUPYTERHUB_API_TOKEN": "0123456789abcdef0123"}})
			if err != nil {
				t.Fatal(err)
			}
			s := containerSpec(cfg, p, backend.Home{Source: "/srv/homes/ann"})
			if s.Name != ContainerName("unit", "Ann@Example.org", "lab") || s.Image != "img:1" || s.User != "1000:100" || s.WorkingDir != "/home/jovyan" {
				t.Errorf("spec %+v", s)
			}
			if s.PublishIP != tc.publishIP || s.Port != 8888 || s.Network != "spawnd-users" {
				t.Errorf("publish %q port %d network %s", s.PublishIP, s.Port, s.Network)
			}
			if s.Memory != 8<<30 || s.NanoCPUs != 4e9 || s.PidsLimit != 1024 {
				t.Errorf("limits %d %d %d", s.Memory, s.NanoCPUs, s.PidsLimit)
			}
			if len(s.Mounts) != 3 || s.Mounts[0].Source != "/srv/homes/ann" || s.Mounts[0].Target != "/home/jovyan" || !s.Mounts[2].ReadOnly {
				t.Errorf("mounts %+v", s.Mounts)
			}
			want := map[string]string{labels.Managed: "true", labels.Instance: "unit", labels.User: "Ann@Example.org", labels.Server: "lab",
				labels.Env: "team", labels.Profile: "large", labels.LockDigest: "sha256:lock1", labels.HomeScheme: HomeScheme, labels.Port: "8888"}
			for k, v := range want {
				if s.Labels[k] != v {
					t.Errorf("label %s = %q, want %q", k, s.Labels[k], v)
				}
			}
			if h := s.Labels[labels.HubToken]; len(h) != 64 || strings.Contains(strings.Join(s.Env, " "), h) {
				t.Errorf("hub token label %q", h)
			}
		})
	}
}
