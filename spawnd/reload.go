package spawnd

import (
	"reflect"
	"strings"
)

// choices is the part of the config a reload may change: who may choose
// which env and profile, and what the profiles are. A start reads it once.
type choices struct {
	DefaultEnv, DefaultProfile string
	Envs                       map[string]EnvConfig // as the config was loaded; envTable has them as their locks are now
	Profiles                   map[string]ProfileConfig
	Teams                      map[string]TeamConfig
}

func choicesOf(c *Config) *choices {
	return &choices{DefaultEnv: c.DefaultEnv, DefaultProfile: c.DefaultProfile, Envs: c.Envs, Profiles: c.Profiles, Teams: c.Teams}
}

// config is the manager's config with the choices as it is now.
func (m *Manager) config() *Config {
	c := m.cfg
	p := m.pol.Load()
	c.DefaultEnv, c.DefaultProfile, c.Envs, c.Profiles, c.Teams = p.DefaultEnv, p.DefaultProfile, p.Envs, p.Profiles, p.Teams
	return &c
}

// Reload puts a new config's envs, profiles, teams and defaults in place,
// for the starts that follow; running servers are not touched. cfg must be
// validated. Anything else that differs from the running config needs a
// restart: Reload then changes nothing and says which keys.
func (m *Manager) Reload(cfg Config) error {
	if keys := restartKeys(&m.cfg, &cfg); len(keys) > 0 {
		return errorf(ErrInvalid, "%s changed, which takes a restart (systemctl restart spawnd; servers keep running); nothing was reloaded",
			strings.Join(keys, ", "))
	}
	m.envs.reset(cfg.Envs)
	m.pol.Store(choicesOf(&cfg))
	m.log.Info("config reloaded", "envs", len(cfg.Envs), "profiles", len(cfg.Profiles), "teams", len(cfg.Teams))
	return nil
}

// restartKeys names the keys whose change a reload cannot take.
func restartKeys(old, now *Config) []string {
	var keys []string
	add := func(changed bool, key string) {
		if changed {
			keys = append(keys, key)
		}
	}
	add(old.Instance != now.Instance, "instance")
	add(old.HomesRoot != now.HomesRoot, "homes_root")
	add(old.HomeOwner != now.HomeOwner, "home_owner")
	add(old.UIDRange != now.UIDRange, "uid_range")
	add(old.MinSystemUID != now.MinSystemUID, "min_system_uid")
	add(old.SlotsDir != now.SlotsDir, "slots_dir")
	add(!reflect.DeepEqual(old.Network, now.Network), "network")
	add(old.StartTimeout != now.StartTimeout, "start_timeout")
	add(old.StopGrace != now.StopGrace, "stop_grace")
	add(old.ReapGrace != now.ReapGrace, "reap_grace")
	add(old.MaxConcurrentStarts != now.MaxConcurrentStarts, "max_concurrent_starts")
	add(!reflect.DeepEqual(poolKeys(old.Pools), poolKeys(now.Pools)), "pools")
	return keys
}

// reset replaces the table's envs with a reloaded config's, each as its
// lock says now (the config was validated from these locks).
func (t *envTable) reset(cfg map[string]EnvConfig) {
	fresh := newEnvTable(cfg, t.log)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.envs, t.seen, t.waiting = fresh.envs, fresh.seen, fresh.waiting
}

// poolKeys are the pools as the config gives them (the parsed parts left out).
func poolKeys(ps []PoolConfig) []PoolConfig {
	out := make([]PoolConfig, len(ps))
	for i, p := range ps {
		out[i] = PoolConfig{Env: p.Env, Profile: p.Profile, Size: p.Size, Windows: p.Windows, Memory: p.Memory}
	}
	return out
}
