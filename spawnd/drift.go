package spawnd

import (
	"cmp"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
)

// EnvDrift is one env as it is now and the locks its servers run: which
// users are on the current lock and which still run an older one.
type EnvDrift struct {
	Env        string
	Image      string // the current lock's image
	LockDigest string // the current lock
	Configured bool   // false: servers run an env the config no longer has
	Locks      []LockServers
}

// LockServers is the servers of one env that run one lock.
type LockServers struct {
	LockDigest string
	Current    bool
	Image      string   // the image they run
	Servers    []Server // sorted by user and server name
}

// Drift reports, for every configured env (and any env servers still run
// that the config dropped), the current lock and the servers on each lock:
// the current one first, then older ones by how many servers run them.
// Servers that failed are not counted: they run nothing.
func (m *Manager) Drift() ([]EnvDrift, error) {
	servers, err := m.List()
	if err != nil {
		return nil, err
	}
	byEnv := map[string]*EnvDrift{}
	for name, e := range m.envs.current() {
		byEnv[name] = &EnvDrift{Env: name, Image: e.Image, LockDigest: e.LockDigest, Configured: true,
			Locks: []LockServers{{LockDigest: e.LockDigest, Current: true, Image: e.Image}}}
	}
	for _, s := range servers {
		if s.State == StateFailed || s.Env == "" {
			continue
		}
		d := byEnv[s.Env]
		if d == nil {
			d = &EnvDrift{Env: s.Env}
			byEnv[s.Env] = d
		}
		i := slices.IndexFunc(d.Locks, func(l LockServers) bool { return l.LockDigest == s.LockDigest })
		if i < 0 {
			d.Locks = append(d.Locks, LockServers{LockDigest: s.LockDigest, Image: s.Image})
			i = len(d.Locks) - 1
		}
		d.Locks[i].Servers = append(d.Locks[i].Servers, s)
	}
	out := make([]EnvDrift, 0, len(byEnv))
	for _, d := range byEnv {
		slices.SortStableFunc(d.Locks, func(a, b LockServers) int {
			if a.Current != b.Current {
				if a.Current {
					return -1
				}
				return 1
			}
			if c := cmp.Compare(len(b.Servers), len(a.Servers)); c != 0 {
				return c
			}
			return cmp.Compare(a.LockDigest, b.LockDigest)
		})
		out = append(out, *d)
	}
	slices.SortFunc(out, func(a, b EnvDrift) int { return cmp.Compare(a.Env, b.Env) })
	return out, nil
}

// driftCollector exports the drift report as spawnd_env_servers.
type driftCollector struct {
	m    *Manager
	desc *prometheus.Desc
}

func newDriftCollector(m *Manager) *driftCollector {
	return &driftCollector{m: m, desc: prometheus.NewDesc("spawnd_env_servers",
		"Servers per env and lock digest; current=\"false\" counts servers still on an older lock (spawnd envs names them).",
		[]string{"env", "lock_digest", "current"}, nil)}
}

func (c *driftCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *driftCollector) Collect(ch chan<- prometheus.Metric) {
	drift, err := c.m.Drift()
	if err != nil {
		return // not synced yet: no series rather than wrong ones
	}
	for _, d := range drift {
		for _, l := range d.Locks {
			current := "false"
			if l.Current {
				current = "true"
			}
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(len(l.Servers)), d.Env, l.LockDigest, current)
		}
	}
}
