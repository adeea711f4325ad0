package spawnd

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd/backend"
)

// startPlan is a start request resolved against the config: everything the
// start does, decided before it touches anything.
type startPlan struct {
	key         key
	envName     string
	env         EnvConfig
	profileName string
	profile     ProfileConfig
	environment []string
	cmd         []string
	shared      []SharedFolder
	// tokenHash identifies the hub's API token given to this start (see
	// labels.HubToken); "" when the request carries none.
	tokenHash string
}

// Bounds of a start request.
const (
	maxEnvVars    = 256
	maxEnvBytes   = 256 << 10
	maxCmdArgs    = 256
	maxGroups     = 256
	maxLoggedName = 64
)

// resolveStart resolves a start request: the names, the env and profile the
// user's groups allow, the environment and the command. It is a pure
// function of its arguments (envs is the current env table); it returns an
// ErrInvalid or ErrForbidden error that says what to fix.
func resolveStart(cfg *Config, envs map[string]EnvConfig, user, server string, req StartRequest) (startPlan, error) {
	if err := ValidateUser(user); err != nil {
		return startPlan{}, err
	}
	if err := ValidateServerName(server); err != nil {
		return startPlan{}, err
	}
	if len(req.Groups) > maxGroups {
		return startPlan{}, errorf(ErrInvalid, "groups has %d entries; at most %d are allowed", len(req.Groups), maxGroups)
	}
	for i, g := range req.Groups {
		if err := validateName("group name", g); err != nil || g == "" {
			return startPlan{}, errorf(ErrInvalid, "groups[%d] is not a valid group name", i)
		}
	}
	pol := teamPolicy(cfg, req.Groups)
	p := startPlan{key: key{user, server}, envName: req.Env, profileName: req.Profile, shared: pol.shared}
	if p.envName == "" {
		p.envName = cfg.DefaultEnv
	}
	env, known := envs[p.envName]
	if known && !pol.envs[p.envName] {
		return startPlan{}, errorf(ErrForbidden, "env %q is not available to this user's groups; choose one of %v", bound(p.envName), keysOf(pol.envs))
	}
	if !known {
		return startPlan{}, errorf(ErrInvalid, "env %q is not configured; choose one of %v", bound(p.envName), sortedKeys(envs))
	}
	p.env = env
	if p.profileName == "" {
		p.profileName = cfg.DefaultProfile
	}
	prof, ok := cfg.Profiles[p.profileName]
	if !ok {
		return startPlan{}, errorf(ErrInvalid, "profile %q is not configured; choose one of %v", bound(p.profileName), sortedKeys(cfg.Profiles))
	}
	if !pol.profiles[p.profileName] {
		return startPlan{}, errorf(ErrForbidden, "profile %q is not available to this user's groups; choose one of %v", bound(p.profileName), keysOf(pol.profiles))
	}
	p.profile = prof
	if len(req.Environment) > maxEnvVars {
		return startPlan{}, errorf(ErrInvalid, "environment has %d variables; at most %d are allowed", len(req.Environment), maxEnvVars)
	}
	if len(req.Cmd)+len(req.Args) > maxCmdArgs {
		return startPlan{}, errorf(ErrInvalid, "cmd and args have %d arguments; at most %d are allowed", len(req.Cmd)+len(req.Args), maxCmdArgs)
	}
	vars := map[string]string{"HOME": env.Home, "USER": env.User.Name}
	for _, kv := range env.Environment {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	size := 0
	for _, k := range sortedKeys(req.Environment) {
		v := req.Environment[k]
		if !envVarRE.MatchString(k) {
			return startPlan{}, errorf(ErrInvalid, "environment: %q is not a valid variable name (letters, digits and '_', not starting with a digit)", bound(k))
		}
		if strings.IndexByte(v, 0) >= 0 {
			return startPlan{}, errorf(ErrInvalid, "environment: the value of %s contains a NUL byte", k)
		}
		size += len(k) + len(v)
		vars[k] = v
	}
	if size > maxEnvBytes {
		return startPlan{}, errorf(ErrInvalid, "environment is %d bytes; at most %d are allowed", size, maxEnvBytes)
	}
	for _, k := range sortedKeys(vars) {
		p.environment = append(p.environment, k+"="+vars[k])
	}
	p.tokenHash = hubTokenHash(req.Environment)
	for field, list := range map[string][]string{"cmd": req.Cmd, "args": req.Args} {
		for i, a := range list {
			if strings.IndexByte(a, 0) >= 0 {
				return startPlan{}, errorf(ErrInvalid, "%s[%d] contains a NUL byte", field, i)
			}
		}
	}
	p.cmd = env.Cmd
	if len(req.Cmd) > 0 {
		p.cmd = req.Cmd
	}
	if len(req.Args) > 0 {
		p.cmd = append(append([]string(nil), p.cmd...), req.Args...)
	}
	return p, nil
}

// containerSpec is the container a resolved start runs, with its home
// where the home store put it. Pure, like resolveStart.
func containerSpec(cfg *Config, p startPlan, home backend.Home) backend.ContainerSpec {
	l := map[string]string{
		labels.Managed:    "true",
		labels.Instance:   cfg.Instance,
		labels.User:       p.key.user,
		labels.Server:     p.key.server,
		labels.Env:        p.envName,
		labels.Profile:    p.profileName,
		labels.LockDigest: p.env.LockDigest,
		labels.HomeScheme: HomeScheme,
		labels.Port:       strconv.Itoa(p.env.Port),
	}
	if p.tokenHash != "" {
		l[labels.HubToken] = p.tokenHash
	}
	s := backend.ContainerSpec{
		Name:       ContainerName(cfg.Instance, p.key.user, p.key.server),
		Image:      p.env.Image,
		Labels:     l,
		Env:        p.environment,
		Cmd:        p.cmd,
		User:       fmt.Sprintf("%d:%d", p.env.User.UID, p.env.User.GID),
		WorkingDir: p.env.Home,
		Mounts:     []backend.Mount{{Source: home.Source, Target: p.env.Home}},
		Port:       p.env.Port,
		Network:    cfg.Network.Name,
		Memory:     p.profile.MemoryBytes(),
		NanoCPUs:   int64(p.profile.CPUs * 1e9),
		PidsLimit:  p.profile.Pids,

		MemoryReservation: p.profile.memoryReservation,
		CPUReservation:    int64(p.profile.CPUReservation * 1e9),
		ShmSize:           p.profile.shmBytes,
		GPUs:              p.profile.GPURequest(),
		Placement:         slices.Concat(p.profile.Placement, home.Placement),
	}
	for _, sh := range p.shared {
		s.Mounts = append(s.Mounts, backend.Mount{Source: sh.Source, Target: sh.Target, ReadOnly: sh.ReadOnly})
	}
	if cfg.Network.Mode == "publish" {
		s.PublishIP = cfg.Network.PublishIP
	}
	return s
}

// hubTokenHash is the SHA-256 of the hub's API token in a start request's
// environment: enough to tell a container holding another (possibly revoked)
// token, and nothing that gives the token away.
func hubTokenHash(env map[string]string) string {
	tok := env["JUPYTERHUB_API_TOKEN"]
	if tok == "" {
		tok = env["JPY_API_TOKEN"]
	}
	if tok == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

// policy is what a user with some JupyterHub groups may choose and gets.
type policy struct {
	teams    []string
	envs     map[string]bool
	profiles map[string]bool
	shared   []SharedFolder
}

// teamPolicy resolves the teams of a user's groups. The hub reports the
// groups; the daemon alone decides what they allow. A user in no team gets
// the default env and profile and no shared folder.
func teamPolicy(cfg *Config, groups []string) policy {
	p := policy{
		envs:     map[string]bool{cfg.DefaultEnv: true},
		profiles: map[string]bool{cfg.DefaultProfile: true},
	}
	in := map[string]bool{}
	for _, g := range groups {
		in[g] = true
	}
	targets := map[string]bool{}
	for _, name := range sortedKeys(cfg.Teams) {
		t := cfg.Teams[name]
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

// bound keeps a request-supplied string short enough to log or echo.
func bound(s string) string {
	if len(s) <= maxLoggedName {
		return s
	}
	return strings.ToValidUTF8(s[:maxLoggedName], "") + "…"
}
