package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spawnd/spawnd/envs"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "spawnd.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const goodConfig = `
listen: 127.0.0.1:9999
token: 0123456789abcdef0123456789abcdef
homes_root: /srv/spawnd/homes
start_timeout: 45s
envs:
  team:
    image: spawnd/team:abc
    environment: ["JUPYTER_ENABLE_LAB=yes"]
profiles:
  small: {memory: 1g, cpus: 0.5, pids: 256}
`

func TestLoadConfig(t *testing.T) {
	cfg, err := loadConfig(writeConfig(t, goodConfig), nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:9999" || cfg.StartTimeout != 45*time.Second || cfg.DefaultEnv != "team" || cfg.DefaultProfile != "small" {
		t.Fatalf("loaded %+v", cfg)
	}
	if got := cfg.Envs["team"].Environment[0]; got != "JUPYTER_ENABLE_LAB=yes" {
		t.Fatalf("environment lost its case: %q", got)
	}
	if cfg.Profiles["small"].MemoryBytes() != 1<<30 {
		t.Fatalf("memory %d", cfg.Profiles["small"].MemoryBytes())
	}
	if u := cfg.Envs["team"].User; u.UID != 1000 || u.GID != 100 || cfg.Envs["team"].Home != "/home/jovyan" {
		t.Fatalf("env defaults: %+v", cfg.Envs["team"])
	}
}

func TestEnvOverridesFile(t *testing.T) {
	t.Setenv("SPAWND_HOMES_ROOT", "/data/homes")
	t.Setenv("SPAWND_NETWORK_MODE", "network")
	cfg, err := loadConfig(writeConfig(t, goodConfig), nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HomesRoot != "/data/homes" || cfg.Network.Mode != "network" {
		t.Fatalf("env not applied: %s %s", cfg.HomesRoot, cfg.Network.Mode)
	}
}

func TestFlagsOverrideEnv(t *testing.T) {
	t.Setenv("SPAWND_LISTEN", "127.0.0.1:1111")
	cmd := newServe()
	if err := cmd.Flags().Parse([]string{"--listen", "127.0.0.1:2222"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(writeConfig(t, goodConfig), cmd.Flags())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:2222" {
		t.Fatalf("listen %s", cfg.Listen)
	}
}

func TestConfigErrorsNameTheKey(t *testing.T) {
	cases := []struct{ name, body, want string }{
		{"unknown top key", goodConfig + "homes_rot: /x\n", "homes_rot"},
		{"unknown nested key", strings.Replace(goodConfig, "image: spawnd/team:abc", "image: spawnd/team:abc\n    privileged: true", 1), "privileged"},
		{"bad duration", strings.Replace(goodConfig, "45s", "soon", 1), "start_timeout"},
		{"relative homes", strings.Replace(goodConfig, "/srv/spawnd/homes", "homes", 1), "homes_root"},
		{"root uid", strings.Replace(goodConfig, "image: spawnd/team:abc", "image: spawnd/team:abc\n    user: {name: root, uid: 0, gid: 5}", 1), "envs.team.user.uid"},
		{"bad memory", strings.Replace(goodConfig, "memory: 1g", "memory: lots", 1), "profiles.small.memory"},
		{"no image", strings.Replace(goodConfig, "image: spawnd/team:abc", "description: x", 1), "envs.team.image"},
		{"bad env var", strings.Replace(goodConfig, "JUPYTER_ENABLE_LAB=yes", "NOEQUALS", 1), "envs.team.environment[0]"},
		{"bad mode", goodConfig + "network: {mode: bridge}\n", "network.mode"},
		{"short token", strings.Replace(goodConfig, "0123456789abcdef0123456789abcdef", "abc", 1), "token"},
		{"yaml syntax", goodConfig + "envs: [\n", "line"},
		{"metrics token is the API token", goodConfig + "metrics_token: 0123456789abcdef0123456789abcdef\n", "metrics_token_file"},
		{"short metrics token", goodConfig + "metrics_token: abc\n", "metrics_token_file"},
		{"explicit uid 0", strings.Replace(goodConfig, "image: spawnd/team:abc", "image: spawnd/team:abc\n    user: {name: jovyan, uid: 0}", 1), "envs.team.user.uid: 0 is root"},
		{"bad egress block", goodConfig + "network: {egress: {block: [10.0.0.0/33]}}\n", "network.egress.block[0]"},
		{"bad egress port", goodConfig + "network: {egress: {host_ports: [8081, 70000]}}\n", "network.egress.host_ports[1]"},
		{"unknown egress key", goodConfig + "network: {egress: {allow: [1.2.3.4]}}\n", "allow"},
		{"egress with a remote engine", goodConfig + "engine: {host: tcp://10.0.0.5:2376}\n", "network.egress"},
		{"swarm without a registry", goodConfig + "engine: {backend: swarm}\n", "engine.registry"},
		{"swarm with the egress fence", goodConfig + "engine: {backend: swarm, registry: reg:5000}\n", "network.egress"},
		{"swarm with icc off", goodConfig + "engine: {backend: swarm, registry: reg:5000}\nnetwork: {egress: {enabled: false}}\n", "network.icc"},
		{"registry without swarm", goodConfig + "engine: {registry: reg:5000}\n", "engine: registry"},
		{"ports without swarm", goodConfig + "engine: {ports: 30000-31000}\n", "engine: registry, insecure_registry, pending_timeout and ports"},
		{"ports not a range", goodConfig + "engine: {backend: swarm, registry: reg:5000, ports: '30000'}\nnetwork: {icc: true, egress: {enabled: false}}\n", `engine.ports: "30000" is not FIRST-LAST`},
		{"privileged ports", goodConfig + "engine: {backend: swarm, registry: reg:5000, ports: 80-90}\nnetwork: {icc: true, egress: {enabled: false}}\n", "engine.ports: 80-90 is not a range of unprivileged ports"},
		{"hub token without a url", goodConfig + "hub: {token: abcdefabcdefabcdef}\n", "hub: a token without hub.url"},
		{"hub url not http", goodConfig + "hub: {url: 'ftp://hub', token: abcdefabcdefabcdef}\n", "hub.url"},
		{"hub url without a token", goodConfig + "hub: {url: 'http://127.0.0.1:8081/hub/api'}\n", "hub.token_file"},
		{"node homes on one engine", goodConfig + "engine: {homes: node}\n", "engine.homes: node pins homes to swarm nodes"},
		{"unknown homes mode", goodConfig + "engine: {backend: swarm, registry: reg:5000, homes: nfs}\nnetwork: {icc: true, egress: {enabled: false}}\n", `engine.homes: "nfs" is not shared or node`},
		{"gpus not a count", strings.Replace(goodConfig, "pids: 256}", "pids: 256, gpus: 'two'}", 1), "profiles.small.gpus"},
		{"gpus zero", strings.Replace(goodConfig, "pids: 256}", "pids: 256, gpus: '0'}", 1), "a count is at least 1"},
		{"shm above memory", strings.Replace(goodConfig, "pids: 256}", "pids: 256, shm_size: 2g}", 1), "profiles.small.shm_size: 2g is more than the memory limit"},
		{"bad shm", strings.Replace(goodConfig, "pids: 256}", "pids: 256, shm_size: big}", 1), "profiles.small.shm_size"},
		{"reservation above limit", strings.Replace(goodConfig, "pids: 256}", "pids: 256, memory_reservation: 3g}", 1), "profiles.small.memory_reservation"},
		{"cpu reservation above cpus", strings.Replace(goodConfig, "pids: 256}", "pids: 256, cpu_reservation: 1}", 1), "profiles.small.cpu_reservation"},
		{"gpus on swarm", strings.Replace(goodConfig, "pids: 256}", "pids: 256, gpus: '0,1'}", 1) +
			"engine: {backend: swarm, registry: reg:5000}\nnetwork: {icc: true, egress: {enabled: false}}\n", "profiles.small.gpus: GPU profiles are not supported on Swarm"},
		{"placement on one engine", strings.Replace(goodConfig, "pids: 256}", "pids: 256, placement: [node.labels.gpu==true]}", 1), "profiles.small.placement"},
		{"bad placement", strings.Replace(goodConfig, "pids: 256}", "pids: 256, placement: [gpu=yes]}", 1) +
			"engine: {backend: swarm, registry: reg:5000}\nnetwork: {icc: true, egress: {enabled: false}}\n", "profiles.small.placement[0]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadConfig(writeConfig(t, tc.body), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one naming %q", err, tc.want)
			}
		})
	}
}

func TestSplitTarget(t *testing.T) {
	cases := []struct {
		arg, flag  string
		set        bool
		user, serv string
	}{
		{"alice", "", false, "alice", ""},
		{"alice/lab", "", false, "alice", "lab"},
		{"a/b", "", true, "a/b", ""},
		{"a/b", "lab", true, "a/b", "lab"},
	}
	for _, tc := range cases {
		u, s := splitTarget(tc.arg, tc.flag, tc.set)
		if u != tc.user || s != tc.serv {
			t.Errorf("splitTarget(%q) = %q %q", tc.arg, u, s)
		}
	}
}

// TestDeployExampleLoads keeps deploy/spawnd.yaml valid.
func TestDeployExampleLoads(t *testing.T) {
	b, err := os.ReadFile("../../deploy/spawnd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	spec := filepath.Join(t.TempDir(), "team.yaml")
	l := &envs.Lock{Env: "team", SpecChecksum: "sha256:x", Base: envs.Base{Ref: "b", Digest: "sha256:b"},
		Cmd: []string{"jupyterhub-singleuser"}, User: envs.User{Name: "jovyan", UID: 1000, GID: 100}}
	l.Seal()
	if err := envs.WriteLock(envs.LockPath(spec), l); err != nil {
		t.Fatal(err)
	}
	body := strings.NewReplacer("/etc/spawnd/envs/team.yaml", spec,
		"token_file: /etc/spawnd/token", "token: 0123456789abcdef0123456789abcdef").Replace(string(b))
	cfg, err := loadConfig(writeConfig(t, body), nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Envs["team"].Image != l.Tag() || len(cfg.Teams["physics"].Shared) != 1 || cfg.DefaultProfile != "default" {
		t.Fatalf("example config: %+v", cfg)
	}
}
