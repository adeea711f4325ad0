package doctor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spawnd/spawnd/internal/ci"
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd/backend"

	"github.com/containerd/errdefs"

	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/spawnd"
)

type fakeEngine struct {
	pingErr error
	info    backend.Info
	images  map[string]backend.ImageInfo
	netErr  error
}

func (f *fakeEngine) Ping(context.Context) error                              { return f.pingErr }
func (f *fakeEngine) Info(context.Context) (backend.Info, error)              { return f.info, nil }
func (f *fakeEngine) CheckNetwork(context.Context, backend.NetworkSpec) error { return f.netErr }
func (f *fakeEngine) ImageInspect(_ context.Context, ref string) (backend.ImageInfo, error) {
	if i, ok := f.images[ref]; ok {
		return i, nil
	}
	return backend.ImageInfo{}, errdefs.ErrNotFound
}

func find(t *testing.T, rs []Result, check string) Result {
	t.Helper()
	for _, r := range rs {
		if r.Check == check {
			return r
		}
	}
	t.Fatalf("no %q check in %+v", check, rs)
	return Result{}
}

const spec = "name: team\nbase: spawnd/debian:bookworm\napt: [git]\n"

// setup makes a healthy installation: homes_root, a spec with a current lock,
// an engine that has the lock's image.
func setup(t *testing.T) (Input, string) {
	t.Helper()
	dir := t.TempDir()
	homes := filepath.Join(dir, "homes")
	if err := os.Mkdir(homes, 0o755); err != nil {
		t.Fatal(err)
	}
	specPath := filepath.Join(dir, "team.yaml")
	if err := os.WriteFile(specPath, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := envs.Load(specPath)
	if err != nil {
		t.Fatal(err)
	}
	l := &envs.Lock{Env: "team", SpecChecksum: s.Checksum(), Base: envs.Base{Ref: "b", Digest: "sha256:b"}, Cmd: []string{"x"}, User: *s.User}
	l.Seal()
	if err := envs.WriteLock(envs.LockPath(specPath), l); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	_ = os.WriteFile(tokenFile, []byte("0123456789abcdef0123"), 0o600)
	eng := &fakeEngine{
		info:   backend.Info{Version: "28.0.0", APIVersion: "1.48", RuncVersion: "1.3.3", LiveRestore: true},
		images: map[string]backend.ImageInfo{l.Tag(): {ID: "sha256:i", Labels: map[string]string{labels.LockDigest: l.Digest}}},
	}
	cfg := &spawnd.Config{HomesRoot: homes, Envs: map[string]spawnd.EnvConfig{"team": {Spec: specPath}}}
	return Input{Config: cfg, Token: "0123456789abcdef0123", TokenFile: tokenFile, Engine: eng}, specPath
}

func TestHealthyInstallPasses(t *testing.T) {
	if os.Getuid() != 0 {
		ci.Skip(t, "homes_root ownership checks need root")
	}
	in, _ := setup(t)
	rs := Run(context.Background(), in)
	if Failed(rs) {
		t.Fatalf("a healthy install failed: %+v", rs)
	}
	if r := find(t, rs, "env team"); r.Status != OK {
		t.Fatalf("env: %+v", r)
	}
}

func TestBrokenSetups(t *testing.T) {
	cases := []struct {
		name   string
		break_ func(t *testing.T, in *Input, spec string)
		check  string
		want   string
	}{
		{"engine down", func(t *testing.T, in *Input, _ string) {
			in.Engine.(*fakeEngine).pingErr = errors.New("connection refused")
		}, "engine", "start it"},
		{"homes_root wrong owner", func(t *testing.T, in *Input, _ string) {
			if err := os.Chown(in.Config.HomesRoot, 1000, 1000); err != nil {
				ci.Skip(t, "chown needs root: %v", err)
			}
		}, "homes_root", "chown root:root"},
		{"homes_root world-writable", func(t *testing.T, in *Input, _ string) { _ = os.Chmod(in.Config.HomesRoot, 0o777) }, "homes_root", "chmod 755"},
		{"homes_root missing", func(t *testing.T, in *Input, _ string) { _ = os.Remove(in.Config.HomesRoot) }, "homes_root", "mkdir -p"},
		{"homes_root full", func(t *testing.T, in *Input, _ string) { in.MinFreeBytes = 1 << 62 }, "homes_root", "free space"},
		{"stale lock", func(t *testing.T, in *Input, spec string) {
			_ = os.WriteFile(spec, []byte(strings.Replace(specContent(), "[git]", "[git, curl]", 1)), 0o644)
		}, "env team", "--relock"},
		{"edited lock", func(t *testing.T, in *Input, spec string) {
			b, _ := os.ReadFile(envs.LockPath(spec))
			_ = os.WriteFile(envs.LockPath(spec), []byte(strings.Replace(string(b), `"x"`, `"y"`, 1)), 0o644)
		}, "env team", "spawnd lock"},
		{"no lock", func(t *testing.T, in *Input, spec string) { _ = os.Remove(envs.LockPath(spec)) }, "env team", "spawnd build"},
		{"image missing", func(t *testing.T, in *Input, _ string) { in.Engine.(*fakeEngine).images = nil }, "env team", "spawnd build"},
		{"token readable", func(t *testing.T, in *Input, _ string) { _ = os.Chmod(in.TokenFile, 0o644) }, "token", "chmod 600"},
		{"no token", func(t *testing.T, in *Input, _ string) { in.Token = "" }, "token", "openssl rand"},
		{"network contradicts the config", func(t *testing.T, in *Input, _ string) {
			in.Engine.(*fakeEngine).netErr = errors.New(`network.icc: the network "u" exists with inter-container traffic on, but network.icc says off; remove it (docker network rm u) or set network.icc: true: invalid argument`)
		}, "network", "docker network rm"},
		{"GPU profile without the NVIDIA runtime", func(t *testing.T, in *Input, _ string) {
			in.Config.Profiles = map[string]spawnd.ProfileConfig{"ml": {GPUs: "all"}}
		}, "gpus", "nvidia-ctk runtime configure"},
		{"old upstream runc", func(t *testing.T, in *Input, _ string) { in.Engine.(*fakeEngine).info.RuncVersion = "1.1.11" }, "runc", "upgrade runc"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in, spec := setup(t)
			tc.break_(t, &in, spec)
			rs := Run(context.Background(), in)
			r := find(t, rs, tc.check)
			if r.Status != Fail || !strings.Contains(r.Fix, tc.want) {
				t.Fatalf("%s: %+v, want a failure whose fix says %q", tc.check, r, tc.want)
			}
			if !Failed(rs) {
				t.Fatal("doctor did not fail")
			}
		})
	}
}

func specContent() string { return spec }

func TestGPUCheck(t *testing.T) {
	gpu := &spawnd.Config{Profiles: map[string]spawnd.ProfileConfig{"ml": {GPUs: "2"}, "cpu": {}}}
	none := &spawnd.Config{Profiles: map[string]spawnd.ProfileConfig{"cpu": {}}}
	for _, tc := range []struct {
		name    string
		cfg     *spawnd.Config
		runtime bool
		want    Status
		detail  string
	}{
		{"GPU profile, runtime", gpu, true, OK, "NVIDIA runtime for ml (gpus: 2)"},
		{"GPU profile, no runtime", gpu, false, Fail, "ml (gpus: 2) ask for GPUs"},
		{"no GPU profile, runtime", none, true, OK, "the engine has the NVIDIA runtime"},
		{"no GPU profile, no runtime", none, false, OK, "no NVIDIA runtime"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := checkGPUs(tc.cfg, backend.Info{GPURuntime: tc.runtime})
			if r.Status != tc.want || !strings.Contains(r.Detail, tc.detail) {
				t.Errorf("%+v; want %s with %q", r, tc.want, tc.detail)
			}
		})
	}
}

func TestRuncAdvisories(t *testing.T) {
	cases := []struct {
		v    string
		want Status
	}{
		{"1.3.3", OK}, {"v1.3.3-0-gd842d771", OK}, {"1.2.8", OK}, {"1.4.0", OK}, {"1.5.1", OK},
		{"1.3.2", Fail}, {"1.2.7", Fail}, {"1.1.12", Fail}, {"v1.1.11-0-g123", Fail},
		{"1.1.5+ds1-1+deb12u1", Warn}, {"garbage", Warn},
	}
	for _, tc := range cases {
		if got := checkRunc(tc.v); got.Status != tc.want {
			t.Errorf("runc %s: %s (%s), want %s", tc.v, got.Status, got.Detail, tc.want)
		}
	}
}

func TestLiveRestoreOffWarns(t *testing.T) {
	in, _ := setup(t)
	in.Engine.(*fakeEngine).info.LiveRestore = false
	if r := find(t, Run(context.Background(), in), "live-restore"); r.Status != Warn {
		t.Fatalf("live-restore: %+v", r)
	}
}

func TestSandboxCheck(t *testing.T) {
	dir := t.TempDir()
	unit := func(body string) string {
		p := filepath.Join(dir, fmt.Sprintf("u%d.service", len(body)))
		if err := os.WriteFile(p, []byte("[Service]\n"+body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	strict := "ProtectSystem=strict\nReadWritePaths=/srv/spawnd -/var/lib/extra\nStateDirectory=spawnd\nProtectHome=true\n"
	for _, tc := range []struct {
		name, unit, homes string
		want              Status
		fix               string
	}{
		{"no unit", filepath.Join(dir, "none.service"), "/srv/spawnd/homes", Skip, ""},
		{"under ReadWritePaths", unit(strict), "/srv/spawnd/homes", OK, ""},
		{"under an optional path", unit(strict), "/var/lib/extra/homes", OK, ""},
		{"under StateDirectory", unit(strict), "/var/lib/spawnd/homes", OK, ""},
		{"elsewhere", unit(strict), "/data/homes", Fail, "ReadWritePaths=/data/homes"},
		{"a sibling that only shares a prefix", unit(strict), "/srv/spawnd-homes", Fail, "ReadWritePaths"},
		{"hidden by ProtectHome", unit(strict), "/home/jupyter", Fail, "ProtectHome"},
		{"not strict", unit("ProtectSystem=full\n"), "/data/homes", OK, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := checkSandbox(tc.unit, tc.homes)
			if r.Status != tc.want || !strings.Contains(r.Fix, tc.fix) {
				t.Errorf("%+v; want %s with a fix naming %q", r, tc.want, tc.fix)
			}
		})
	}
	// The unit spawnd ships, with the homes_root its example config uses.
	if r := checkSandbox(filepath.Join("..", "deploy", "systemd", "spawnd.service"), "/srv/spawnd/homes"); r.Status != OK {
		t.Errorf("the shipped unit with the shipped homes_root: %+v", r)
	}
}

func TestHubVersionCheck(t *testing.T) {
	dir := t.TempDir()
	env := func(name, jh string) spawnd.EnvConfig {
		sub, err := os.MkdirTemp(dir, name)
		if err != nil {
			t.Fatal(err)
		}
		specPath := filepath.Join(sub, name+".yaml")
		if err := os.WriteFile(specPath, []byte(spec), 0o644); err != nil {
			t.Fatal(err)
		}
		sp, err := envs.Load(specPath)
		if err != nil {
			t.Fatal(err)
		}
		l := &envs.Lock{Env: name, SpecChecksum: sp.Checksum(), Base: envs.Base{Ref: "b", Digest: "sha256:b"}, Cmd: []string{"x"}, User: *sp.User}
		if jh != "" {
			l.Pip = &envs.PipLock{Packages: []envs.PipPackage{{Name: "tornado", Version: "6.4"}, {Name: "JupyterHub", Version: jh}}}
		}
		l.Seal()
		if err := envs.WriteLock(envs.LockPath(specPath), l); err != nil {
			t.Fatal(err)
		}
		return spawnd.EnvConfig{Spec: specPath}
	}
	for _, tc := range []struct {
		name   string
		envs   map[string]spawnd.EnvConfig
		hub    string
		want   Status
		detail string
	}{
		{"same major", map[string]spawnd.EnvConfig{"team": env("team", "5.3.0")}, "5.5.4", OK, "team 5.3.0"},
		{"another major", map[string]spawnd.EnvConfig{"team": env("team", "5.3.0"), "old": env("old", "4.1.6")}, "5.5.4", Fail, "old locks jupyterhub 4.1.6"},
		{"no jupyterhub locked", map[string]spawnd.EnvConfig{"bare": env("bare", "")}, "6.1.1", Warn, "bare (locks no jupyterhub)"},
		{"given by image", map[string]spawnd.EnvConfig{"team": env("team", "6.0.0"), "img": {Image: "x"}}, "6.1.1", OK, "img (given by image)"},
		{"hub unknown", map[string]spawnd.EnvConfig{"team": env("team", "6.0.0")}, "", Skip, "unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := checkHubVersions(&spawnd.Config{Envs: tc.envs}, tc.hub)
			if r.Status != tc.want || !strings.Contains(r.Detail, tc.detail) {
				t.Errorf("%+v; want %s with %q", r, tc.want, tc.detail)
			}
		})
	}
}

func TestBootCostCheck(t *testing.T) {
	cfg := &spawnd.Config{Envs: map[string]spawnd.EnvConfig{"team": {Image: "img:1", Cmd: []string{"jupyterhub-singleuser"}}, "bare": {Image: "img:2"}}}
	tests := []struct {
		name    string
		env     string
		pooled  bool
		summary string
		cold    bool
		err     error
		want    Status
		says    string
	}{
		{"measured", "team", false, "2.10 CPU-s to import x", false, nil, OK, "2.10 CPU-s"},
		{"cold without a pool", "team", false, "cannot be pre-warmed: not python", true, nil, OK, "cannot be pre-warmed"},
		{"cold with a pool", "team", true, "cannot be pre-warmed: not python", true, nil, Warn, "its pool's starts boot cold"},
		{"no command", "bare", false, "", false, nil, Skip, "names no command"},
		{"the launcher failed", "team", false, "", false, errors.New("exit 1"), Warn, "not measured: exit 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := *cfg
			if tt.pooled {
				c.Pools = []spawnd.PoolConfig{{Env: "team"}}
			}
			r := checkBootCost(context.Background(), tt.env, &c, func(context.Context, string, []string) (string, bool, error) {
				return tt.summary, tt.cold, tt.err
			})
			if r.Status != tt.want || !strings.Contains(r.Detail, tt.says) {
				t.Fatalf("checkBootCost = %+v; want %s saying %q", r, tt.want, tt.says)
			}
		})
	}
}

// TestImageOfAnOlderPlanWarns: an env image that matches its lock but was
// built by a spawnd whose images held less (images.PlanVersion) warns,
// naming the build that brings it up to date; the current plan is OK.
func TestImageOfAnOlderPlanWarns(t *testing.T) {
	for _, tc := range []struct {
		label string
		want  Status
	}{{"", Warn}, {"1", Warn}, {"2", OK}} {
		in, spec := setup(t)
		in.ImagePlan = "2"
		eng := in.Engine.(*fakeEngine)
		for ref, img := range eng.images {
			if tc.label != "" {
				img.Labels[labels.Plan] = tc.label
			}
			eng.images[ref] = img
		}
		r := checkEnv(context.Background(), "team", in.Config.Envs["team"], in.Engine, true, in.ImagePlan)
		if r.Status != tc.want || (tc.want == Warn && (r.Fix != "spawnd build "+spec || !strings.Contains(r.Detail, "older spawnd"))) {
			t.Fatalf("an image of plan %q: %+v; want %s", tc.label, r, tc.want)
		}
	}
}
