package spawnd

import "sort"

func keysOf(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Offer lists the envs and profiles a user with these groups may choose,
// for a hub's options form, and how containers reach the hub.
func (m *Manager) Offer(groups []string) Offer {
	cfg := m.config()
	pol := teamPolicy(cfg, groups)
	o := Offer{Network: UserNetwork{Name: m.cfg.Network.Name, Mode: m.cfg.Network.Mode}}
	if gw, ok := m.gateway.Load().(string); ok {
		o.Network.Gateway = gw
	}
	for _, name := range keysOf(pol.envs) {
		e, ok := m.envs.get(name)
		if !ok {
			continue
		}
		o.Envs = append(o.Envs, EnvOffer{Name: name, Description: e.Description, Image: e.Image, LockDigest: e.LockDigest, Port: e.Port, Default: name == cfg.DefaultEnv})
	}
	for _, name := range keysOf(pol.profiles) {
		p := cfg.Profiles[name]
		o.Profiles = append(o.Profiles, ProfileOffer{Name: name, MemoryMB: p.MemoryBytes() >> 20, CPUs: p.CPUs, Pids: p.Pids, Default: name == cfg.DefaultProfile})
	}
	return o
}
