package spawnd

import (
	"fmt"
	"slices"
	"strings"
	"time"

	units "github.com/docker/go-units"
)

// PoolConfig keeps warm servers of one env and profile ready for the next
// starts (docs/POOLS.md): started before anyone asks, with
// the server and its extensions imported, no home and no identity, each
// taken by one start and never returned.
type PoolConfig struct {
	// Env is the env the warm servers run (its current lock). Required.
	Env string `mapstructure:"env"`
	// Profile is the resource profile they run with; a start takes a warm
	// server only when its env and profile are these. Default: the default
	// profile.
	Profile string `mapstructure:"profile"`
	// Size is how many warm servers to keep outside every window. Default 0.
	Size int `mapstructure:"size"`
	// Windows raise (or lower) the size at given times, in the daemon's
	// local time: a class on Mondays at 09:00 wants 60 at 08:55.
	Windows []PoolWindow `mapstructure:"windows"`
	// Memory is the most the pool's warm servers may hold together, e.g.
	// 16g; each counts its profile's memory_reservation, or its memory
	// limit when the profile has none. Default: no ceiling but the host's
	// memory.
	Memory string `mapstructure:"memory"`

	memoryBytes int64
	windows     []window
}

// PoolWindow is a time of the week when a pool keeps another size.
type PoolWindow struct {
	// Days are the days it applies (mon … sun). Default: every day.
	Days []string `mapstructure:"days"`
	// From and To are HH:MM, local time; To after From (a window does not
	// cross midnight: give two).
	From string `mapstructure:"from"`
	To   string `mapstructure:"to"`
	// Size is how many warm servers to keep during the window.
	Size int `mapstructure:"size"`
}

type window struct {
	days     map[time.Weekday]bool // empty: every day
	from, to time.Duration         // since midnight
	size     int
}

var weekdays = map[string]time.Weekday{"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday}

// Name is how the pool is called in reports and labels: env/profile.
func (p PoolConfig) Name() string { return p.Env + "/" + p.Profile }

// want is how many warm servers the pool keeps at now: the largest size of
// the windows now is in, or Size outside every window.
func (p PoolConfig) want(now time.Time) int {
	since := time.Duration(now.Hour())*time.Hour + time.Duration(now.Minute())*time.Minute + time.Duration(now.Second())*time.Second
	n, in := 0, false
	for _, w := range p.windows {
		if (len(w.days) == 0 || w.days[now.Weekday()]) && since >= w.from && since < w.to {
			n, in = max(n, w.size), true
		}
	}
	if !in {
		return p.Size
	}
	return n
}

// most is the largest size the pool ever wants.
func (p PoolConfig) most() int {
	n := p.Size
	for _, w := range p.windows {
		n = max(n, w.size)
	}
	return n
}

func parseClock(key, s string) (time.Duration, error) {
	t, err := time.Parse("15:04", s)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not HH:MM (24-hour, e.g. 08:55)", key, s)
	}
	return time.Duration(t.Hour())*time.Hour + time.Duration(t.Minute())*time.Minute, nil
}

// validatePools checks the pools against the envs and profiles, naming the
// key of the first mistake and the numbers when one cannot fit its ceiling.
func (c *Config) validatePools() error {
	seen := map[string]string{}
	for i := range c.Pools {
		p := &c.Pools[i]
		key := fmt.Sprintf("pools[%d]", i)
		if p.Env == "" {
			return fmt.Errorf("%s.env: not set; name the env whose servers the pool keeps warm (one of %s)", key, strings.Join(sortedKeys(c.Envs), ", "))
		}
		if _, ok := c.Envs[p.Env]; !ok {
			return fmt.Errorf("%s.env: %q is not an env of envs (%s)", key, p.Env, strings.Join(sortedKeys(c.Envs), ", "))
		}
		if p.Profile == "" {
			p.Profile = c.DefaultProfile
		}
		prof, ok := c.Profiles[p.Profile]
		if !ok {
			return fmt.Errorf("%s.profile: %q is not a profile of profiles (%s)", key, p.Profile, strings.Join(sortedKeys(c.Profiles), ", "))
		}
		if prev, dup := seen[p.Name()]; dup {
			return fmt.Errorf("%s: env %s with profile %s has a pool already (%s); give it one pool with windows", key, p.Env, p.Profile, prev)
		}
		seen[p.Name()] = key
		if prof.GPURequest() != nil {
			return fmt.Errorf("%s.profile: %q asks for GPUs; a warm server would hold a GPU nobody uses, so GPU profiles have no pool", key, p.Profile)
		}
		if p.Size < 0 {
			return fmt.Errorf("%s.size: %d must not be negative", key, p.Size)
		}
		p.windows = nil
		for j, w := range p.Windows {
			wkey := fmt.Sprintf("%s.windows[%d]", key, j)
			from, err := parseClock(wkey+".from", w.From)
			if err != nil {
				return err
			}
			to, err := parseClock(wkey+".to", w.To)
			if err != nil {
				return err
			}
			if to <= from {
				return fmt.Errorf("%s: to %s is not after from %s (a window does not cross midnight; give two)", wkey, w.To, w.From)
			}
			if w.Size < 0 {
				return fmt.Errorf("%s.size: %d must not be negative", wkey, w.Size)
			}
			days := map[time.Weekday]bool{}
			for _, d := range w.Days {
				wd, ok := weekdays[strings.ToLower(d)]
				if !ok {
					return fmt.Errorf("%s.days: %q is not a day (mon, tue, wed, thu, fri, sat, sun)", wkey, d)
				}
				days[wd] = true
			}
			p.windows = append(p.windows, window{days: days, from: from, to: to, size: w.Size})
		}
		p.memoryBytes = 0
		if p.Memory != "" {
			b, err := units.RAMInBytes(p.Memory)
			if err != nil || b <= 0 {
				return fmt.Errorf("%s.memory: %q is not a size (e.g. 16g)", key, p.Memory)
			}
			p.memoryBytes = b
			if each := prof.warmBytes(); each > 0 && int64(p.most())*each > b {
				return fmt.Errorf("%s: %d warm servers of profile %s (%s each) need %s, more than the pool's memory ceiling %s; lower the size or raise memory",
					key, p.most(), p.Profile, units.BytesSize(float64(each)), units.BytesSize(float64(int64(p.most())*each)), units.BytesSize(float64(b)))
			}
		}
	}
	slices.SortStableFunc(c.Pools, func(a, b PoolConfig) int { return strings.Compare(a.Name(), b.Name()) })
	return nil
}

// checkPoolsFit refuses pools whose warm servers together would reserve
// more than the host's memory (total bytes).
func checkPoolsFit(pools []PoolConfig, profiles map[string]ProfileConfig, total int64) error {
	var need int64
	for _, p := range pools {
		need += int64(p.most()) * profiles[p.Profile].warmBytes()
	}
	if total > 0 && need > total {
		return fmt.Errorf("pools: the warm servers of every pool at their largest need %s (each its profile's memory_reservation, else its memory limit), more than this host's %s; lower the sizes, or give the profiles a memory_reservation",
			units.BytesSize(float64(need)), units.BytesSize(float64(total)))
	}
	return nil
}

// warmBytes is what a warm server of the profile counts against a pool's
// ceiling and the host: its reservation, else its limit.
func (p ProfileConfig) warmBytes() int64 {
	if p.memoryReservation > 0 {
		return p.memoryReservation
	}
	return p.memoryBytes
}
