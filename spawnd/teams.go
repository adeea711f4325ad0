package spawnd

import (
	"sort"

	"github.com/spawnd/spawnd/api"
)

// policy is what a user with some JupyterHub groups may choose and gets.
type policy struct {
	teams    []string
	envs     map[string]bool
	profiles map[string]bool
	shared   []SharedFolder
}

// policyFor resolves the teams of a user's groups. The hub reports the
// groups; the daemon alone decides what they allow. A user in no team gets
// the default env and profile and no shared folder.
func (m *Manager) policyFor(groups []string) policy {
	p := policy{
		envs:     map[string]bool{m.cfg.DefaultEnv: true},
		profiles: map[string]bool{m.cfg.DefaultProfile: true},
	}
	in := map[string]bool{}
	for _, g := range groups {
		in[g] = true
	}
	targets := map[string]bool{}
	for _, name := range sortedKeys(m.cfg.Teams) {
		t := m.cfg.Teams[name]
		member := false
		for _, g := range t.Groups {
			member = member || in[g]
		}
		if !member {
			continue
		}
		p.teams = append(p.teams, name)
		for _, e := range t.Envs {
			p.envs[e] = true
		}
		for _, pr := range t.Profiles {
			p.profiles[pr] = true
		}
		for _, sh := range t.Shared {
			if !targets[sh.Target] { // two teams on one target: the first team (by name) wins
				targets[sh.Target] = true
				p.shared = append(p.shared, sh)
			}
		}
	}
	return p
}

func keysOf(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Options lists the envs and profiles a user with these groups may choose,
// for a hub's options form, and how containers reach the hub.
func (m *Manager) Options(groups []string) api.Options {
	pol := m.policyFor(groups)
	o := api.Options{Network: api.NetworkInfo{Name: m.cfg.Network.Name, Mode: m.cfg.Network.Mode}}
	if gw, ok := m.gateway.Load().(string); ok {
		o.Network.Gateway = gw
	}
	for _, name := range keysOf(pol.envs) {
		e, ok := m.envs.get(name)
		if !ok {
			continue
		}
		o.Envs = append(o.Envs, api.EnvInfo{Name: name, Description: e.Description, Image: e.Image, LockDigest: e.LockDigest, Port: e.Port, Default: name == m.cfg.DefaultEnv})
	}
	for _, name := range keysOf(pol.profiles) {
		p := m.cfg.Profiles[name]
		o.Profiles = append(o.Profiles, api.ProfileInfo{Name: name, MemoryMB: p.MemoryBytes() >> 20, CPUs: p.CPUs, Pids: p.Pids, Default: name == m.cfg.DefaultProfile})
	}
	return o
}
