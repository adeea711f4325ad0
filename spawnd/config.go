package spawnd

import (
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	units "github.com/docker/go-units"
	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/egress"
)

// Config is the daemon's lifecycle configuration: where homes live, how user
// containers are networked and limited, and the envs and resource profiles a
// hub may choose among by name. The CLI loads it (file, SPAWND_* env, flags);
// Validate fills defaults and names the key of every mistake.
type Config struct {
	// Instance tells this daemon's containers apart from another daemon's on
	// the same engine ([a-z0-9], at most 32). Default "default".
	Instance string `mapstructure:"instance"`
	// HomesRoot is the absolute host path that holds every user's home.
	HomesRoot string `mapstructure:"homes_root"`
	// HomeOwner is who owns each person's home on the host (docs/INSTALL.md, "Each person's files are their own"):
	//   - "env" (the default): the env image's user (uid 1000), the same uid
	//     for every person, under homes_root.
	//   - "system": the person's own host account (a PAM login, as TLJH
	//     has it): the home is that account's home directory from the
	//     passwd database, e.g. /home/alice, owned by it.
	//   - "range": a uid spawnd gives each person from uid_range, recorded
	//     as the owner of the home under homes_root.
	// With system and range, a server still runs as the env image's user
	// and sees its home through an idmapped mount; on the host every file
	// stays its person's.
	HomeOwner string `mapstructure:"home_owner"`
	// UIDRange is the uids home_owner range gives out, "first-last" (e.g.
	// 2000000-2099999); no host account or group may have one of them.
	UIDRange string `mapstructure:"uid_range"`
	// MinSystemUID is the lowest uid of an account home_owner system serves
	// (below it are system accounts, never a person's). Default 1000.
	MinSystemUID int `mapstructure:"min_system_uid"`
	// SlotsDir holds the mount points through which servers get their homes
	// with home_owner system or range, and warm servers theirs when they are
	// taken (pools). Default /run/spawnd/slots/<instance>.
	SlotsDir string `mapstructure:"slots_dir"`
	// Network is how user containers are networked.
	Network NetworkConfig `mapstructure:"network"`
	// MaxConcurrentStarts caps the servers booting at once, each from its
	// container's create until its port listens (or it fails); further starts
	// queue (admission limit for class starts: a boot is CPU-bound). Default:
	// 2 × CPU cores.
	MaxConcurrentStarts int `mapstructure:"max_concurrent_starts"`
	// StartTimeout bounds a start's wait in the admission queue, and then its
	// boot until the single-user port answers. Default 120s.
	StartTimeout time.Duration `mapstructure:"start_timeout"`
	// StopGrace is how long a stop waits after SIGTERM before SIGKILL. Default 3s.
	StopGrace time.Duration `mapstructure:"stop_grace"`
	// ReapGrace is how old a container that was created but never started must
	// be before the reaper removes it. Default 2m.
	ReapGrace time.Duration `mapstructure:"reap_grace"`
	// DefaultEnv is used when a start names no env. Default: the only env, or "team".
	DefaultEnv string `mapstructure:"default_env"`
	// DefaultProfile is used when a start names no profile. Default: the only profile, or "default".
	DefaultProfile string `mapstructure:"default_profile"`
	// Envs are the team environments, by name.
	Envs map[string]EnvConfig `mapstructure:"envs"`
	// Profiles are the resource profiles, by name.
	Profiles map[string]ProfileConfig `mapstructure:"profiles"`
	// Teams map JupyterHub groups to the envs and profiles their members may
	// choose and the shared folders mounted for them. A user in no team gets
	// the default env and profile only.
	Teams map[string]TeamConfig `mapstructure:"teams"`
	// Pools keep warm servers of an env and profile ready, so that a class
	// start does not pay every server's boot when the students click
	// (docs/POOLS.md). Each warm server is taken by one start, never reused.
	Pools []PoolConfig `mapstructure:"pools"`
}

// TeamConfig is one team: who is in it (JupyterHub groups) and what they get.
type TeamConfig struct {
	// Groups are the JupyterHub groups whose members are in the team.
	Groups []string `mapstructure:"groups"`
	// Envs the team may choose (the default env is always allowed).
	Envs []string `mapstructure:"envs"`
	// Profiles the team may choose (the default profile is always allowed).
	Profiles []string `mapstructure:"profiles"`
	// Shared folders mounted into the team's servers.
	Shared []SharedFolder `mapstructure:"shared"`
}

// SharedFolder is a host directory mounted into a team's servers.
type SharedFolder struct {
	// Source is the absolute host path; it must exist.
	Source string `mapstructure:"source"`
	// Target is the absolute path in the container (e.g. /home/jovyan/shared).
	Target string `mapstructure:"target"`
	// ReadOnly mounts it read-only.
	ReadOnly bool `mapstructure:"read_only"`
}

// NetworkConfig says how user containers are reached.
type NetworkConfig struct {
	// Name of the user network; created by the daemon if missing. Default "spawnd-users".
	Name string `mapstructure:"name"`
	// Mode "publish" publishes the single-user port on PublishIP (a hub on the
	// host); "network" reports the container's address on the network (a hub in
	// a container on the same network). Default "publish".
	Mode string `mapstructure:"mode"`
	// PublishIP is the host address ports are published on. Default 127.0.0.1.
	PublishIP string `mapstructure:"publish_ip"`
	// ICC allows user containers to reach each other. Default false.
	ICC bool `mapstructure:"icc"`
	// Egress fences user containers in: what they cannot reach.
	Egress EgressConfig `mapstructure:"egress"`
}

// EgressConfig says what user containers cannot reach (docs/SECURITY.md).
// The daemon keeps the rules in an nftables table of its own
// (inet spawnd_<instance>) and refuses to start servers until they are in
// place.
type EgressConfig struct {
	// Enabled turns the rules on. Default true. Off, the daemon deletes its
	// table at start.
	Enabled *bool `mapstructure:"enabled"`
	// AllowMetadata lets containers reach the cloud's metadata services
	// (169.254.0.0/16, 100.100.100.200, fd00:ec2::254), blocked by default:
	// they hand the machine's credentials to anyone who asks.
	AllowMetadata bool `mapstructure:"allow_metadata"`
	// Block lists more destinations, CIDRs or addresses, e.g. the site's
	// private networks (10.0.0.0/8) or a database host.
	Block []string `mapstructure:"block"`
	// HostPorts, when set, are the only TCP ports of this host that user
	// containers may open: the hub's API port (8081 in the shipped configs).
	// Every other service of the host is then out of their reach. Unset, the
	// host is not fenced (services bound to 127.0.0.1 are out of reach anyway).
	HostPorts []int `mapstructure:"host_ports"`

	blocked   []netip.Prefix
	hostPorts []uint16
}

// On reports whether egress rules are on.
func (e EgressConfig) On() bool { return e.Enabled == nil || *e.Enabled }

// Blocked are the destinations the rules block (valid after Validate).
func (e EgressConfig) Blocked() []netip.Prefix { return e.blocked }

func (e *EgressConfig) validate() error {
	e.blocked, e.hostPorts = nil, nil
	if !e.On() {
		return nil
	}
	if !e.AllowMetadata {
		e.blocked = append(e.blocked, egress.MetadataCIDRs...)
	}
	for i, s := range e.Block {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return fmt.Errorf("network.egress.block[%d]: %q is not a CIDR (10.0.0.0/8) or an address", i, s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		e.blocked = append(e.blocked, p.Masked())
	}
	for i, port := range e.HostPorts {
		if port < 1 || port > 65535 {
			return fmt.Errorf("network.egress.host_ports[%d]: %d is not a TCP port (1-65535)", i, port)
		}
		e.hostPorts = append(e.hostPorts, uint16(port))
	}
	return nil
}

// EnvConfig is one team environment as the daemon runs it.
type EnvConfig struct {
	// Description is shown in the hub's options form (default: the lock's).
	Description string `mapstructure:"description"`
	// Spec is the env spec file (e.g. /etc/spawnd/envs/team.yaml). The env's
	// image, lock digest, user and command then come from the spec's lock,
	// re-read (within a second) whenever `spawnd build` changes it. Give spec or image.
	Spec string `mapstructure:"spec"`
	// Image is a pinned image to run, for envs not built by spawnd.
	Image string `mapstructure:"image"`
	// Pull says when the engine pulls an image env's image: if-not-present
	// (the default: the first start on a host without it pulls it, with the
	// daemon user's registry credentials), always (every start pulls, so a
	// moved tag is followed), or never (a missing image fails the start).
	// An env built from its spec is never pulled: spawnd build makes it.
	Pull string `mapstructure:"pull"`
	// LockDigest is the digest of the env's lock, reported on every server.
	LockDigest string `mapstructure:"lock_digest"`
	// User is the non-root user the container runs as and who owns the home.
	User EnvUser `mapstructure:"user"`
	// Home is where the home is mounted in the container. Default /home/<user.name>.
	Home string `mapstructure:"home"`
	// Port is the single-user server's port in the container. Default 8888.
	Port int `mapstructure:"port"`
	// Cmd is the default command (a hub's start request may override it).
	Cmd []string `mapstructure:"cmd"`
	// Environment is set in every container of the env ("KEY=VALUE" each; a
	// start request's variables win over these).
	Environment []string `mapstructure:"environment"`
}

// EnvUser is the user inside an env's containers.
type EnvUser struct {
	// Name of the user. Default jovyan.
	Name string `mapstructure:"name"`
	// UID of the user; never 0. Default 1000.
	UID int `mapstructure:"uid"`
	// GID of the user's group. Default 100.
	GID int `mapstructure:"gid"`
}

// ProfileConfig is one resource profile.
type ProfileConfig struct {
	// Memory limit, e.g. "2g", "512m". Empty = unlimited.
	Memory string `mapstructure:"memory"`
	// CPUs limit, e.g. 1.5. 0 = unlimited.
	CPUs float64 `mapstructure:"cpus"`
	// Pids limit. Default (and when 0 or unset) 1024; at least 16. A
	// profile cannot ask for unlimited forks.
	Pids int64 `mapstructure:"pids"`
	// Placement constrains the nodes the profile's servers may run on, as
	// Swarm constraints (node.labels.gpu==true, node.hostname!=db1);
	// engine.backend swarm only.
	Placement []string `mapstructure:"placement"`
	// GPUs the profile's servers get: all, a count (2), or devices by
	// index or UUID (device=0, or 0,1, or GPU-3a4b…). Needs the NVIDIA
	// Container Toolkit on the engine (spawnd doctor checks); one engine
	// only (Swarm services cannot request devices). Empty = none.
	GPUs string `mapstructure:"gpus"`
	// ShmSize is the size of /dev/shm, e.g. "1g" (PyTorch's data loaders
	// share tensors through it; the engine's default is 64m). It counts
	// against the memory limit. Empty = the engine's default.
	ShmSize string `mapstructure:"shm_size"`
	// MemoryReservation is the memory a server is promised, at most the
	// limit, e.g. "1g": Swarm places servers by it (default there: the
	// limit); one engine takes memory back down to it under pressure.
	MemoryReservation string `mapstructure:"memory_reservation"`
	// CPUReservation is the CPUs a server is promised, at most cpus, e.g.
	// 0.5: Swarm places by it; one engine weighs CPU time by it under
	// contention (CPU shares). 0 = none.
	CPUReservation float64 `mapstructure:"cpu_reservation"`

	memoryBytes, shmBytes, memoryReservation int64
}

// MemoryBytes is the parsed memory limit.
func (p ProfileConfig) MemoryBytes() int64 { return p.memoryBytes }

// GPURequest is the parsed gpus; nil for none (or not valid: Validate
// says so).
func (p ProfileConfig) GPURequest() *backend.GPURequest {
	g, _ := parseGPUs(p.GPUs)
	return g
}

var gpuIDRE = regexp.MustCompile(`^([0-9]+|(GPU|MIG)-[A-Za-z0-9/-]+)$`)

// parseGPUs reads a profile's gpus: all, a count, or device ids.
func parseGPUs(v string) (*backend.GPURequest, error) {
	v = strings.TrimSpace(v)
	switch {
	case v == "":
		return nil, nil
	case v == "all":
		return &backend.GPURequest{Count: -1}, nil
	}
	ids, named := strings.CutPrefix(v, "device=")
	if n, err := strconv.Atoi(v); err == nil && !named {
		if n < 1 {
			return nil, fmt.Errorf("%d GPUs: a count is at least 1 (leave gpus out for none)", n)
		}
		return &backend.GPURequest{Count: n}, nil
	}
	var list []string
	for id := range strings.SplitSeq(ids, ",") {
		id = strings.TrimSpace(id)
		if !gpuIDRE.MatchString(id) {
			return nil, fmt.Errorf("%q is not all, a count, or devices (device=0 for GPU 0; 0,1 or GPU-3a4b… separated by commas)", v)
		}
		list = append(list, id)
	}
	return &backend.GPURequest{DeviceIDs: list}, nil
}

var (
	instanceRE  = regexp.MustCompile(`^[a-z0-9]{1,32}$`)
	placementRE = regexp.MustCompile(`^node\.(id|hostname|role|platform\.os|platform\.arch|labels\.[A-Za-z0-9._-]+)\s*(==|!=)\s*[A-Za-z0-9._-]+$`)
)

// Validate fills the defaults and then checks every section, naming the key
// of the first mistake and what to do about it. Each section fills its own
// defaults (defaults) and checks itself (validate); the rules shared with
// other rooms live once: env and user names in package envs, the homes_root
// owner in CheckHomesRoot.
func (c *Config) Validate() error {
	// Defaults go into the maps: copy them, so that the caller's config is
	// never changed under it and Validate can run twice.
	c.Envs = maps.Clone(c.Envs)
	c.Profiles = maps.Clone(c.Profiles)
	c.Teams = maps.Clone(c.Teams)
	c.Pools = slices.Clone(c.Pools)
	for k, t := range c.Teams {
		t.Shared = slices.Clone(t.Shared)
		c.Teams[k] = t
	}
	c.defaults()
	if err := c.validateTop(); err != nil {
		return err
	}
	if err := c.Network.validate(); err != nil {
		return err
	}
	if len(c.Envs) == 0 {
		return fmt.Errorf("envs: no env configured; add at least one (envs.<name>.image)")
	}
	for _, name := range sortedKeys(c.Envs) {
		e, err := c.Envs[name].resolve("envs." + name)
		if err != nil {
			return err
		}
		c.Envs[name] = e
	}
	if err := pickDefault("default_env", "envs", &c.DefaultEnv, c.Envs, "team"); err != nil {
		return err
	}
	for _, name := range sortedKeys(c.Profiles) {
		p := c.Profiles[name]
		if err := p.validate("profiles." + name); err != nil {
			return err
		}
		c.Profiles[name] = p
	}
	if err := pickDefault("default_profile", "profiles", &c.DefaultProfile, c.Profiles, "default"); err != nil {
		return err
	}
	for _, name := range sortedKeys(c.Teams) {
		if err := c.Teams[name].validate("teams."+name, c); err != nil {
			return err
		}
	}
	return c.validatePools()
}

// defaults fills every default that needs nothing but the config itself.
func (c *Config) defaults() {
	if c.Instance == "" {
		c.Instance = "default"
	}
	if c.MaxConcurrentStarts == 0 {
		c.MaxConcurrentStarts = 2 * runtime.NumCPU()
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 120 * time.Second
	}
	if c.StopGrace == 0 {
		c.StopGrace = 3 * time.Second
	}
	if c.ReapGrace == 0 {
		c.ReapGrace = 2 * time.Minute
	}
	if c.HomeOwner == "" {
		c.HomeOwner = HomeOwnerEnv
	}
	if c.MinSystemUID == 0 {
		c.MinSystemUID = 1000
	}
	if c.SlotsDir == "" && (c.HomeOwner != HomeOwnerEnv || len(c.Pools) > 0) {
		c.SlotsDir = filepath.Join("/run/spawnd/slots", c.Instance)
	}
	c.Network.defaults()
	if len(c.Profiles) == 0 {
		c.Profiles = map[string]ProfileConfig{"default": {Memory: "2g", CPUs: 1, Pids: 1024}}
	}
	for name, p := range c.Profiles {
		if p.Pids == 0 {
			p.Pids = 1024
		}
		c.Profiles[name] = p
	}
}

// validateTop checks the top-level keys.
func (c *Config) validateTop() error {
	if !instanceRE.MatchString(c.Instance) {
		return fmt.Errorf("instance: %q must be 1-32 characters of a-z and 0-9", c.Instance)
	}
	if c.HomesRoot == "" {
		return fmt.Errorf("homes_root: not set; give the absolute host path that holds users' homes (e.g. /srv/spawnd/homes)")
	}
	if !filepath.IsAbs(c.HomesRoot) {
		return fmt.Errorf("homes_root: %q is not an absolute path", c.HomesRoot)
	}
	c.HomesRoot = filepath.Clean(c.HomesRoot)
	if err := c.validateOwner(); err != nil {
		return err
	}
	if c.MaxConcurrentStarts < 0 {
		return fmt.Errorf("max_concurrent_starts: %d must be positive", c.MaxConcurrentStarts)
	}
	for _, d := range []struct {
		key string
		d   time.Duration
	}{{"start_timeout", c.StartTimeout}, {"stop_grace", c.StopGrace}, {"reap_grace", c.ReapGrace}} {
		if d.d < 0 {
			return fmt.Errorf("%s: %s must not be negative", d.key, d.d)
		}
	}
	return nil
}

func (n *NetworkConfig) defaults() {
	if n.Name == "" {
		n.Name = "spawnd-users"
	}
	if n.Mode == "" {
		n.Mode = "publish"
	}
	if n.PublishIP == "" {
		n.PublishIP = "127.0.0.1"
	}
}

func (n *NetworkConfig) validate() error {
	if n.Mode != "publish" && n.Mode != "network" {
		return fmt.Errorf("network.mode: %q is not one of publish, network", n.Mode)
	}
	return n.Egress.validate()
}

// resolve fills an env from its spec's lock and its defaults, and checks it.
func (e EnvConfig) resolve(key string) (EnvConfig, error) {
	if err := envs.CheckName(e.name(key)); err != nil {
		return e, fmt.Errorf("%s: %w", key, err)
	}
	if e.Spec != "" {
		if e.Pull != "" && e.Pull != PullNever {
			return e, fmt.Errorf("%s.pull: %q, but an env built from its spec is built by spawnd build, never pulled; remove pull (or give image instead of spec)", key, e.Pull)
		}
		ne, err := fromLock(e)
		if err != nil {
			return e, fmt.Errorf("%s.spec: %w", key, err)
		}
		if e.Image != "" && e.Image != ne.Image {
			return e, fmt.Errorf("%s: give spec or image, not both (the spec's lock names %s)", key, ne.Image)
		}
		e = ne
	}
	if e.Image == "" {
		return e, fmt.Errorf("%s.image: not set; give the env's spec (%s.spec) or a pinned image", key, key)
	}
	e.defaults()
	return e, e.validate(key)
}

// name is the env's name: the last part of its key.
func (EnvConfig) name(key string) string { return strings.TrimPrefix(key, "envs.") }

// Pull policies of an image env.
const (
	PullIfNotPresent = "if-not-present"
	PullAlways       = "always"
	PullNever        = "never"
)

func (e *EnvConfig) defaults() {
	if e.Pull == "" {
		e.Pull = PullIfNotPresent
		if e.Spec != "" {
			e.Pull = PullNever
		}
	}
	if e.User.Name == "" {
		e.User.Name = "jovyan"
	}
	if e.User.UID == 0 && e.User.GID == 0 {
		e.User.UID, e.User.GID = 1000, 100 // unset (an explicit uid 0 is refused where the config is read)
	}
	if e.Home == "" {
		e.Home = "/home/" + e.User.Name
	}
	if e.Port == 0 {
		e.Port = 8888
	}
}

func (e EnvConfig) validate(key string) error {
	if err := e.checkRunAs(key); err != nil {
		return err
	}
	if e.Port < 1 || e.Port > 65535 {
		return fmt.Errorf("%s.port: %d is not a TCP port", key, e.Port)
	}
	switch e.Pull {
	case PullIfNotPresent, PullAlways, PullNever:
	default:
		return fmt.Errorf("%s.pull: %q is not if-not-present, always or never", key, e.Pull)
	}
	for i, kv := range e.Environment {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || !envVarRE.MatchString(k) {
			return fmt.Errorf("%s.environment[%d]: %q is not KEY=VALUE with a valid variable name", key, i, kv)
		}
	}
	return nil
}

func (p *ProfileConfig) validate(key string) error {
	if err := envs.CheckName(strings.TrimPrefix(key, "profiles.")); err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	if p.Memory != "" {
		b, err := units.RAMInBytes(p.Memory)
		if err != nil || b < 6*1024*1024 {
			return fmt.Errorf("%s.memory: %q is not a memory size of at least 6m (e.g. 512m, 2g)", key, p.Memory)
		}
		p.memoryBytes = b
	}
	if p.CPUs < 0 || p.CPUs > 1024 {
		return fmt.Errorf("%s.cpus: %v must be between 0 (unlimited) and 1024", key, p.CPUs)
	}
	if p.ShmSize != "" {
		b, err := units.RAMInBytes(p.ShmSize)
		if err != nil || b < 1<<20 {
			return fmt.Errorf("%s.shm_size: %q is not a size of at least 1m (e.g. 256m, 2g)", key, p.ShmSize)
		}
		if p.memoryBytes > 0 && b > p.memoryBytes {
			return fmt.Errorf("%s.shm_size: %s is more than the memory limit %s; /dev/shm is memory, so it could never be filled", key, p.ShmSize, p.Memory)
		}
		p.shmBytes = b
	}
	if p.MemoryReservation != "" {
		b, err := units.RAMInBytes(p.MemoryReservation)
		if err != nil || b < 6*1024*1024 {
			return fmt.Errorf("%s.memory_reservation: %q is not a memory size of at least 6m (e.g. 512m, 2g)", key, p.MemoryReservation)
		}
		if p.memoryBytes > 0 && b > p.memoryBytes {
			return fmt.Errorf("%s.memory_reservation: %s is more than the limit %s; a reservation is at most the limit", key, p.MemoryReservation, p.Memory)
		}
		p.memoryReservation = b
	}
	if p.CPUReservation < 0 || (p.CPUs > 0 && p.CPUReservation > p.CPUs) {
		return fmt.Errorf("%s.cpu_reservation: %v must be between 0 and the profile's cpus (%v)", key, p.CPUReservation, p.CPUs)
	}
	if _, err := parseGPUs(p.GPUs); err != nil {
		return fmt.Errorf("%s.gpus: %w", key, err)
	}
	if p.Pids < 16 {
		return fmt.Errorf("%s.pids: %d is too low for a Jupyter server; use at least 16", key, p.Pids)
	}
	for i, c := range p.Placement {
		if !placementRE.MatchString(c) {
			return fmt.Errorf("%s.placement[%d]: %q is not a constraint like node.labels.gpu==true or node.hostname!=db1", key, i, c)
		}
	}
	return nil
}

// validate checks a team against the config's envs and profiles, and
// cleans its shared folders' paths in place.
func (t TeamConfig) validate(key string, c *Config) error {
	if len(t.Groups) == 0 {
		return fmt.Errorf("%s.groups: empty; name the JupyterHub groups whose members are in the team", key)
	}
	for i, e := range t.Envs {
		if _, ok := c.Envs[e]; !ok {
			return fmt.Errorf("%s.envs[%d]: %q is not one of the envs %v", key, i, e, sortedKeys(c.Envs))
		}
	}
	for i, p := range t.Profiles {
		if _, ok := c.Profiles[p]; !ok {
			return fmt.Errorf("%s.profiles[%d]: %q is not one of the profiles %v", key, i, p, sortedKeys(c.Profiles))
		}
	}
	for i, sh := range t.Shared {
		f := fmt.Sprintf("%s.shared[%d]", key, i)
		if !filepath.IsAbs(sh.Source) || filepath.Clean(sh.Source) == "/" {
			return fmt.Errorf("%s.source: %q must be an absolute host path below /", f, sh.Source)
		}
		if !filepath.IsAbs(sh.Target) || filepath.Clean(sh.Target) == "/" {
			return fmt.Errorf("%s.target: %q must be an absolute path below / in the container", f, sh.Target)
		}
		t.Shared[i].Source, t.Shared[i].Target = filepath.Clean(sh.Source), filepath.Clean(sh.Target)
	}
	return nil
}

// pickDefault fills *name when it is unset (the only entry, or fallback),
// and checks that it names an entry of m.
func pickDefault[V any](key, what string, name *string, m map[string]V, fallback string) error {
	if *name == "" {
		if len(m) == 1 {
			*name = sortedKeys(m)[0]
		} else if _, ok := m[fallback]; ok {
			*name = fallback
		} else {
			return fmt.Errorf("%s: not set and there are %d %s; name one of %v", key, len(m), what, sortedKeys(m))
		}
	}
	if _, ok := m[*name]; !ok {
		return fmt.Errorf("%s: %q is not one of the %s %v", key, *name, what, sortedKeys(m))
	}
	return nil
}

var envVarRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// checkRunAs checks who and what an env runs as: the rules a lock must meet
// at startup and on every reload alike.
func (e EnvConfig) checkRunAs(key string) error {
	if e.Image == "" {
		return fmt.Errorf("%s.image: not set", key)
	}
	if err := envs.CheckUnixUser(e.User.Name); err != nil {
		return fmt.Errorf("%s.user.name: %w", key, err)
	}
	if e.User.UID <= 0 {
		return fmt.Errorf("%s.user.uid: %d; user containers never run as root, use a uid above 0", key, e.User.UID)
	}
	if e.User.GID < 0 {
		return fmt.Errorf("%s.user.gid: %d must not be negative", key, e.User.GID)
	}
	if !filepath.IsAbs(e.Home) || filepath.Clean(e.Home) == "/" {
		return fmt.Errorf("%s.home: %q must be an absolute path below /", key, e.Home)
	}
	for i, a := range e.Cmd {
		if a == "" || strings.ContainsRune(a, 0) {
			return fmt.Errorf("%s.cmd[%d]: empty or holds a NUL", key, i)
		}
	}
	return nil
}
