package spawnd

import (
	"strings"
	"testing"
	"time"
)

func TestPoolConfigIsChecked(t *testing.T) {
	tests := []struct {
		name  string
		pools []PoolConfig
		want  string // "" = valid
	}{
		{"a plain pool", []PoolConfig{{Env: "team", Size: 3}}, ""},
		{"windows", []PoolConfig{{Env: "team", Windows: []PoolWindow{{Days: []string{"mon", "Wed"}, From: "08:55", To: "10:30", Size: 60}}}}, ""},
		{"no env", []PoolConfig{{Size: 3}}, "pools[0].env: not set"},
		{"unknown env", []PoolConfig{{Env: "nope"}}, `pools[0].env: "nope" is not an env`},
		{"unknown profile", []PoolConfig{{Env: "team", Profile: "huge"}}, `pools[0].profile: "huge" is not a profile`},
		{"two pools of one env and profile", []PoolConfig{{Env: "team"}, {Env: "team", Profile: "default"}}, "has a pool already"},
		{"negative size", []PoolConfig{{Env: "team", Size: -1}}, "pools[0].size: -1 must not be negative"},
		{"bad clock", []PoolConfig{{Env: "team", Windows: []PoolWindow{{From: "8h", To: "10:00"}}}}, `pools[0].windows[0].from: "8h" is not HH:MM`},
		{"a window across midnight", []PoolConfig{{Env: "team", Windows: []PoolWindow{{From: "23:00", To: "01:00"}}}}, "does not cross midnight"},
		{"bad day", []PoolConfig{{Env: "team", Windows: []PoolWindow{{Days: []string{"monday"}, From: "08:00", To: "09:00"}}}}, `"monday" is not a day`},
		{"over the ceiling", []PoolConfig{{Env: "team", Memory: "3g", Windows: []PoolWindow{{From: "08:00", To: "09:00", Size: 2}}}},
			"pools[0]: 2 warm servers of profile default (2GiB each) need 4GiB, more than the pool's memory ceiling 3GiB"},
		{"a ceiling that is no size", []PoolConfig{{Env: "team", Memory: "lots"}}, `pools[0].memory: "lots" is not a size`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Pools = tt.pools
			err := cfg.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Validate = %v; want it valid", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Validate = %v; want an error with %q", err, tt.want)
			}
		})
	}
}

func TestPoolWantFollowsItsWindows(t *testing.T) {
	cfg := testConfig(t)
	cfg.Pools = []PoolConfig{{Env: "team", Size: 2, Windows: []PoolWindow{
		{Days: []string{"mon"}, From: "08:55", To: "10:30", Size: 60},
		{Days: []string{"mon"}, From: "10:00", To: "11:00", Size: 10},
		{From: "23:00", To: "23:59", Size: 0},
	}}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	p := cfg.Pools[0]
	monday := time.Date(2026, 12, 7, 0, 0, 0, 0, time.Local) // a Monday
	tests := []struct {
		at   time.Time
		want int
	}{
		{monday.Add(8*time.Hour + 54*time.Minute), 2},
		{monday.Add(8*time.Hour + 55*time.Minute), 60},
		{monday.Add(10*time.Hour + 15*time.Minute), 60}, // two windows: the larger
		{monday.Add(10*time.Hour + 30*time.Minute), 10},
		{monday.Add(11 * time.Hour), 2},
		{monday.Add(23*time.Hour + 30*time.Minute), 0}, // every day, a window of none
		{monday.Add(24*time.Hour + 9*time.Hour), 2},    // Tuesday 09:00
	}
	for _, tt := range tests {
		if got := p.want(tt.at); got != tt.want {
			t.Errorf("want(%s) = %d; want %d", tt.at.Format("Mon 15:04"), got, tt.want)
		}
	}
	if p.most() != 60 {
		t.Errorf("most = %d; want 60", p.most())
	}
}

func TestPoolsMustFitTheHost(t *testing.T) {
	cfg := testConfig(t)
	cfg.Pools = []PoolConfig{{Env: "team", Size: 10}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	err := checkPoolsFit(cfg.Pools, cfg.Profiles, 8<<30)
	if err == nil || !strings.Contains(err.Error(), "need 20GiB (each its profile's memory_reservation, else its memory limit), more than this host's 8GiB") {
		t.Fatalf("10 × 2 GiB on an 8 GiB host: %v", err)
	}
	if err := checkPoolsFit(cfg.Pools, cfg.Profiles, 32<<30); err != nil {
		t.Fatalf("on a 32 GiB host: %v", err)
	}
	// A reservation is what a warm server counts when the profile has one.
	cfg = testConfig(t)
	cfg.Profiles = map[string]ProfileConfig{"default": {Memory: "2g", MemoryReservation: "200m"}}
	cfg.Pools = []PoolConfig{{Env: "team", Size: 30}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := checkPoolsFit(cfg.Pools, cfg.Profiles, 8<<30); err != nil {
		t.Fatalf("30 × 200 MiB reserved on an 8 GiB host: %v", err)
	}
}
