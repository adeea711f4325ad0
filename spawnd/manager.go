package spawnd

import (
	"github.com/spawnd/spawnd/spawnd/egress"

	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/spawnd/spawnd/api"
)

type key struct{ user, server string }

// opKind is what a flight on a key does.
type opKind int

const (
	opStart opKind = iota + 1
	opStop
)

// flight is one operation in progress on one server. Concurrent callers of the
// same kind share it (single flight); a caller of the other kind waits for it.
type flight struct {
	kind opKind
	done chan struct{}
	srv  api.Server
	err  error
}

func (f *flight) wait(ctx context.Context) (api.Server, error) {
	select {
	case <-f.done:
		return f.srv, f.err
	case <-ctx.Done():
		return api.Server{}, ctx.Err()
	}
}

// record is the in-memory view of one server.
type record struct {
	srv         api.Server
	containerID string
	engineState string
	created     time.Time
	flight      *flight
	progress    *progressLog
	probeCancel context.CancelFunc
	tokenHash   string // LabelHubToken of the current container
	// probeAddr is where readiness is checked: the container's own address
	// and port. A published port is no good: the engine's userland proxy
	// accepts connections there before the server listens.
	probeAddr string
}

// Manager runs the lifecycle of user servers on one Runtime.
type Manager struct {
	cfg   Config
	rt    Runtime
	homes *Homes
	log   *slog.Logger
	admit chan struct{}
	// Dial checks that a server's port accepts connections; tests may replace it.
	Dial func(ctx context.Context, addr string) error

	baseCtx    context.Context
	cancelBase context.CancelFunc
	bg         sync.WaitGroup

	mu       sync.Mutex
	servers  map[key]*record
	deleting map[string]bool // users whose home is being deleted

	engineUp atomic.Bool
	envs     *envTable
	gateway  atomic.Value // string: the user network's gateway
	synced   chan struct{}
	syncOnce sync.Once
	metrics  *metrics
	fence    Fence // nil: no egress rules
}

// Fence keeps the host's egress rules for the user network (spawnd/egress
// implements it with nftables).
type Fence interface {
	Apply(ctx context.Context, r egress.Rules) error
}

// UseFence makes every sync put the egress rules the config asks for
// (network.egress) in place before any server starts. Call before Run.
func (m *Manager) UseFence(f Fence) { m.fence = f }

// NewManager returns a Manager for a validated config. reg may be nil.
func NewManager(cfg Config, rt Runtime, log *slog.Logger, reg prometheus.Registerer) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	homes, err := NewHomes(cfg.HomesRoot)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Manager{
		cfg:        cfg,
		rt:         rt,
		homes:      homes,
		log:        log,
		admit:      make(chan struct{}, cfg.MaxConcurrentStarts),
		Dial:       dialTCP,
		baseCtx:    ctx,
		cancelBase: cancel,
		servers:    make(map[key]*record),
		deleting:   make(map[string]bool),
		synced:     make(chan struct{}),
		envs:       newEnvTable(cfg.Envs, log),
	}
	m.metrics = newMetrics(m, reg)
	return m, nil
}

// Config returns the validated config.
func (m *Manager) Config() Config { return m.cfg }

// Homes returns the homes the manager uses.
func (m *Manager) Homes() *Homes { return m.homes }

// EngineUp reports whether the last contact with the engine succeeded.
func (m *Manager) EngineUp() bool { return m.engineUp.Load() }

// Synced is closed once the first reconcile with the engine has finished.
func (m *Manager) Synced() <-chan struct{} { return m.synced }

// errNotSynced is the answer to anything that reads or changes servers before
// the first sync with the engine: until then the daemon does not know which
// servers exist, and "not found" would be a lie that makes a hub forget a
// running server.
var errNotSynced = api.Errorf(api.CodeUnavailable, "the daemon has not synced with the container engine yet (is the engine up?); try again shortly")

// checkSynced returns errNotSynced until the first sync.
func (m *Manager) checkSynced() error {
	select {
	case <-m.synced:
		return nil
	default:
		return errNotSynced
	}
}

// Close stops background work (readiness probes, in-flight starts). User
// containers keep running.
func (m *Manager) Close() {
	m.cancelBase()
	m.bg.Wait()
}

func (m *Manager) selector() map[string]string {
	return map[string]string{LabelManaged: "true", LabelInstance: m.cfg.Instance}
}

// plan is a validated start request, resolved against the config. Making one
// has no side effects.
type plan struct {
	key         key
	envName     string
	env         EnvConfig
	profileName string
	profile     ProfileConfig
	environment []string
	cmd         []string
	shared      []SharedFolder
	// tokenHash identifies the hub's API token given to this start (see
	// LabelHubToken); "" when the request carries none.
	tokenHash string
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

const (
	maxEnvVars    = 256
	maxEnvBytes   = 256 << 10
	maxCmdArgs    = 256
	maxGroups     = 256
	maxLoggedName = 64
)

func (m *Manager) makePlan(user, server string, req api.StartRequest) (plan, error) {
	if err := ValidateUser(user); err != nil {
		return plan{}, err
	}
	if err := ValidateServerName(server); err != nil {
		return plan{}, err
	}
	for i, g := range req.Groups {
		if err := validateName("group name", g); err != nil || g == "" {
			return plan{}, api.Errorf(api.CodeInvalid, "groups[%d] is not a valid group name", i)
		}
	}
	pol := m.policyFor(req.Groups)
	p := plan{key: key{user, server}, envName: req.Env, profileName: req.Profile, shared: pol.shared}
	if p.envName == "" {
		p.envName = m.cfg.DefaultEnv
	}
	if _, known := m.envs.get(p.envName); known && !pol.envs[p.envName] {
		return plan{}, api.Errorf(api.CodeForbidden, "env %q is not available to this user's groups; choose one of %v", bound(p.envName), keysOf(pol.envs))
	}
	env, ok := m.envs.get(p.envName)
	if !ok {
		return plan{}, api.Errorf(api.CodeInvalid, "env %q is not configured; choose one of %v", bound(p.envName), m.envs.names())
	}
	p.env = env
	if p.profileName == "" {
		p.profileName = m.cfg.DefaultProfile
	}
	prof, ok := m.cfg.Profiles[p.profileName]
	if !ok {
		return plan{}, api.Errorf(api.CodeInvalid, "profile %q is not configured; choose one of %v", bound(p.profileName), sortedKeys(m.cfg.Profiles))
	}
	p.profile = prof
	if !pol.profiles[p.profileName] {
		return plan{}, api.Errorf(api.CodeForbidden, "profile %q is not available to this user's groups; choose one of %v", bound(p.profileName), keysOf(pol.profiles))
	}
	if len(req.Environment) > maxEnvVars {
		return plan{}, api.Errorf(api.CodeInvalid, "environment has %d variables; at most %d are allowed", len(req.Environment), maxEnvVars)
	}
	if len(req.Cmd)+len(req.Args) > maxCmdArgs {
		return plan{}, api.Errorf(api.CodeInvalid, "cmd and args have %d arguments; at most %d are allowed", len(req.Cmd)+len(req.Args), maxCmdArgs)
	}
	if len(req.Groups) > maxGroups {
		return plan{}, api.Errorf(api.CodeInvalid, "groups has %d entries; at most %d are allowed", len(req.Groups), maxGroups)
	}
	vars := map[string]string{"HOME": env.Home, "USER": env.User.Name}
	for _, kv := range env.Environment {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	size := 0
	for k, v := range req.Environment {
		if !envVarRE.MatchString(k) {
			return plan{}, api.Errorf(api.CodeInvalid, "environment: %q is not a valid variable name (letters, digits and '_', not starting with a digit)", bound(k))
		}
		if containsNUL(v) {
			return plan{}, api.Errorf(api.CodeInvalid, "environment: the value of %s contains a NUL byte", k)
		}
		size += len(k) + len(v)
		vars[k] = v
	}
	if size > maxEnvBytes {
		return plan{}, api.Errorf(api.CodeInvalid, "environment is %d bytes; at most %d are allowed", size, maxEnvBytes)
	}
	for _, k := range sortedKeys(vars) {
		p.environment = append(p.environment, k+"="+vars[k])
	}
	p.tokenHash = hubTokenHash(req.Environment)
	for field, list := range map[string][]string{"cmd": req.Cmd, "args": req.Args} {
		for i, a := range list {
			if containsNUL(a) {
				return plan{}, api.Errorf(api.CodeInvalid, "%s[%d] contains a NUL byte", field, i)
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

func (m *Manager) spec(p plan, home string) ContainerSpec {
	labels := map[string]string{
		LabelManaged:    "true",
		LabelInstance:   m.cfg.Instance,
		LabelUser:       p.key.user,
		LabelServer:     p.key.server,
		LabelEnv:        p.envName,
		LabelProfile:    p.profileName,
		LabelLockDigest: p.env.LockDigest,
		LabelHomeScheme: HomeScheme,
		LabelPort:       strconv.Itoa(p.env.Port),
	}
	if p.tokenHash != "" {
		labels[LabelHubToken] = p.tokenHash
	}
	s := ContainerSpec{
		Name:       ContainerName(m.cfg.Instance, p.key.user, p.key.server),
		Image:      p.env.Image,
		Labels:     labels,
		Env:        p.environment,
		Cmd:        p.cmd,
		User:       fmt.Sprintf("%d:%d", p.env.User.UID, p.env.User.GID),
		WorkingDir: p.env.Home,
		Mounts:     append([]Mount{{Source: home, Target: p.env.Home}}, sharedMounts(p.shared)...),
		Port:       p.env.Port,
		Network:    m.cfg.Network.Name,
		Memory:     p.profile.MemoryBytes(),
		NanoCPUs:   int64(p.profile.CPUs * 1e9),
		PidsLimit:  p.profile.Pids,
	}
	if m.cfg.Network.Mode == "publish" {
		s.PublishIP = m.cfg.Network.PublishIP
	}
	return s
}

// Start starts the server (user, server) and returns it once its container
// runs. It is idempotent: a running server is returned as it is, and
// concurrent starts of one server share one attempt and one container.
func (m *Manager) Start(ctx context.Context, user, server string, req api.StartRequest) (api.Server, error) {
	if err := m.checkSynced(); err != nil {
		return api.Server{}, err
	}
	p, err := m.makePlan(user, server, req)
	if err != nil {
		return api.Server{}, err
	}
	for {
		m.mu.Lock()
		if m.deleting[user] {
			m.mu.Unlock()
			return api.Server{}, api.Errorf(api.CodeConflict, "the home of this user is being deleted; try again when that has finished")
		}
		rec := m.servers[p.key]
		if rec != nil && rec.flight != nil {
			f := rec.flight
			m.mu.Unlock()
			srv, err := f.wait(ctx)
			if f.kind == opStart {
				m.metrics.starts.WithLabelValues("joined").Inc()
				return srv, err
			}
			if ctx.Err() != nil {
				return api.Server{}, ctx.Err()
			}
			continue // a stop finished: start afresh
		}
		if rec != nil && rec.srv.State == api.StateRunning && (p.tokenHash == "" || p.tokenHash == rec.tokenHash) {
			srv, id := rec.srv, rec.containerID
			m.mu.Unlock()
			m.metrics.starts.WithLabelValues("running").Inc()
			if srv.Ready {
				return srv, nil
			}
			// Running but not yet listening (a start from before a daemon
			// restart): answer when it listens, as a fresh start would.
			wctx, cancel := context.WithTimeout(ctx, m.cfg.StartTimeout)
			err := m.waitListening(wctx, rec, id, secretValues(p.environment))
			cancel()
			if err != nil {
				return api.Server{}, err
			}
			return m.Status(user, server)
		}
		// A running container that holds another hub token than this start
		// gives (the hub issued a new one and may have revoked the old) is
		// replaced: never hand back a server whose token the hub no longer honours.
		if rec == nil {
			rec = &record{}
			m.servers[p.key] = rec
		}
		f := &flight{kind: opStart, done: make(chan struct{})}
		rec.flight = f
		oldID := rec.containerID
		if rec.probeCancel != nil {
			rec.probeCancel()
			rec.probeCancel = nil
		}
		rec.progress = newProgressLog()
		rec.srv = api.Server{
			User: user, Server: server, State: api.StatePending,
			Env: p.envName, Profile: p.profileName, LockDigest: p.env.LockDigest, Image: p.env.Image,
		}
		m.mu.Unlock()

		m.bg.Add(1)
		go func() {
			defer m.bg.Done()
			m.runStart(p, rec, f, oldID)
		}()
		return f.wait(ctx)
	}
}

func (m *Manager) runStart(p plan, rec *record, f *flight, oldID string) {
	ctx, cancel := context.WithCancel(m.baseCtx)
	defer cancel()
	began := time.Now()
	log := m.log.With("user", bound(p.key.user), "server", bound(p.key.server), "env", p.envName)
	srv, err := m.doStart(ctx, p, rec, oldID, log)

	m.mu.Lock()
	defer m.mu.Unlock()
	rec.flight = nil
	if err != nil {
		msg := api.ErrorMessage(err)
		if errors.Is(err, context.DeadlineExceeded) {
			msg = fmt.Sprintf("the start did not finish within start_timeout (%s)", m.cfg.StartTimeout)
		}
		if api.ErrorCode(err) == api.CodeInternal {
			log.Error("start failed", "err", err)
		} else {
			log.Warn("start refused", "err", err)
		}
		rec.containerID, rec.engineState = "", ""
		rec.srv.State = api.StateFailed
		rec.srv.Reason = "start failed: " + msg
		if ee := (*exitError)(nil); errors.As(err, &ee) {
			rec.srv.ExitCode = ee.code
		}
		rec.srv.Ready = false
		rec.progress.add(api.ProgressEvent{Progress: 100, Step: api.StepFailed, Message: "Start failed: " + msg, Failed: true})
		m.metrics.starts.WithLabelValues("failed").Inc()
		f.err = err
		if _, ok := err.(*api.Error); !ok && api.ErrorCode(err) == api.CodeInternal {
			f.err = api.Errorf(api.CodeInternal, "%s", msg)
		}
	} else {
		m.metrics.starts.WithLabelValues("created").Inc()
		m.metrics.startSeconds.Observe(time.Since(began).Seconds())
		log.Info("server started", "container_id", short(srv.ContainerID), "elapsed", time.Since(began).Round(time.Millisecond))
		srv = rec.srv
	}
	f.srv = srv
	close(f.done)
}

func (m *Manager) doStart(ctx context.Context, p plan, rec *record, oldID string, log *slog.Logger) (api.Server, error) {
	prog := rec.progress
	prog.add(api.ProgressEvent{Progress: 0, Step: api.StepAccepted, Message: "Server requested"})

	// Admission: at most max_concurrent_starts servers boot at once, each
	// from the engine's create until its port listens (or it fails). Booting
	// a single-user server is CPU-bound; letting a whole class boot at once
	// makes every one of them slow.
	qctx, qcancel := context.WithTimeout(ctx, m.cfg.StartTimeout)
	m.metrics.queued.Inc()
	select {
	case m.admit <- struct{}{}:
		m.metrics.queued.Dec()
		qcancel()
	case <-qctx.Done():
		m.metrics.queued.Dec()
		qcancel()
		if ctx.Err() == nil {
			return api.Server{}, api.Errorf(api.CodeUnavailable, "%d servers are booting and this start waited %s for its turn; try again shortly (max_concurrent_starts)", m.cfg.MaxConcurrentStarts, m.cfg.StartTimeout)
		}
		return api.Server{}, ctx.Err()
	}
	defer func() { <-m.admit }()
	ctx, cancel := context.WithTimeout(ctx, m.cfg.StartTimeout)
	defer cancel()

	if _, err := m.rt.ImageID(ctx, p.env.Image); err != nil {
		if errdefs.IsNotFound(err) {
			return api.Server{}, api.Errorf(api.CodeConflict, "the image %s of env %q is not on the engine; build it first (spawnd build)", p.env.Image, p.envName)
		}
		return api.Server{}, m.engineErr("checking image", err)
	}
	prog.add(api.ProgressEvent{Progress: 15, Step: api.StepImage, Message: fmt.Sprintf("Env %s: image present", p.envName)})

	home, err := m.homes.Ensure(p.key.user, p.env.User.UID, p.env.User.GID)
	if err != nil {
		return api.Server{}, err
	}
	for _, sh := range p.shared {
		if fi, err := os.Stat(sh.Source); err != nil || !fi.IsDir() {
			return api.Server{}, api.Errorf(api.CodeConflict, "the shared folder %s of the user's team does not exist on the host; an admin must create it", sh.Source)
		}
	}
	prog.add(api.ProgressEvent{Progress: 30, Step: api.StepHome, Message: "Home directory ready"})

	if oldID != "" {
		if err := m.rt.Remove(ctx, oldID, 0); err != nil {
			return api.Server{}, m.engineErr("removing the previous container", err)
		}
	}
	spec := m.spec(p, home)
	id, adopted, err := m.create(ctx, spec, log)
	if err != nil {
		return api.Server{}, err
	}
	m.mu.Lock()
	rec.containerID, rec.created = id, time.Now()
	rec.srv.ContainerID = id
	m.mu.Unlock()
	prog.add(api.ProgressEvent{Progress: 50, Step: api.StepCreated, Message: "Container created"})

	cleanup := func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := m.rt.Remove(cctx, id, 0); err != nil {
			log.Error("removing a container whose start failed", "container_id", short(id), "err", err)
		}
	}
	if !adopted {
		if err := m.rt.Start(ctx, id); err != nil {
			cleanup()
			return api.Server{}, m.engineErr("starting the container", err)
		}
	}
	prog.add(api.ProgressEvent{Progress: 70, Step: api.StepStarted, Message: "Container started; waiting for the server to listen"})
	c, err := m.rt.Inspect(ctx, id)
	if err != nil {
		cleanup()
		return api.Server{}, m.engineErr("inspecting the started container", err)
	}
	m.mu.Lock()
	m.observeLocked(rec, c)
	if rec.srv.State == api.StateRunning && !rec.srv.Ready && rec.probeCancel == nil {
		m.probeLocked(rec)
	}
	m.mu.Unlock()
	if err := m.waitListening(ctx, rec, id, secretValues(spec.Env)); err != nil {
		cleanup()
		return api.Server{}, err
	}
	m.mu.Lock()
	srv := rec.srv
	m.mu.Unlock()
	return srv, nil
}

// exitError is a server that exited, or never listened, during its start.
type exitError struct {
	code *int
	msg  string
}

func (e *exitError) Error() string { return e.msg }
func (e *exitError) Unwrap() error { return api.Errorf(api.CodeServerFailed, "%s", e.msg) }

// logTailLines bounds the container log a failed start reports.
const (
	logTailLines = 20
	logLineMax   = 300
)

// waitListening waits until the server in container id accepts connections
// on its port, and fails as soon as the container ends first, with its exit
// code and the last lines of its log (secrets removed).
func (m *Manager) waitListening(ctx context.Context, rec *record, id string, secrets []string) error {
	tick := time.NewTicker(5 * time.Millisecond) // reads memory only; the answer comes within 5 ms of the probe
	defer tick.Stop()
	for {
		m.mu.Lock()
		srv, cur := rec.srv, rec.containerID
		m.mu.Unlock()
		switch {
		case cur != id:
			return api.Errorf(api.CodeConflict, "the server's container was replaced during its start")
		case srv.Ready:
			return nil
		case srv.State == api.StateFailed || srv.State == api.StateStopped:
			srv = m.settleKill(ctx, rec, id, srv)
			msg := "the server " + srv.Reason + " before it listened"
			if tail := m.logTail(ctx, id, secrets); tail != "" {
				msg += "; its last log lines:\n" + tail
			}
			return &exitError{code: srv.ExitCode, msg: msg}
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				msg := fmt.Sprintf("the server did not listen on its port within start_timeout (%s)", m.cfg.StartTimeout)
				if tail := m.logTail(context.WithoutCancel(ctx), id, secrets); tail != "" {
					msg += "; its last log lines:\n" + tail
				}
				return &exitError{msg: msg}
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// settleKill gives the engine a moment to finish reporting a server killed
// with SIGKILL (exit code 137): the kernel's OOM kill can reach the engine
// after the exit, and "oom_killed" tells the person more than "code 137".
// At most ten inspects, 50 ms apart; any other exit is returned as it is.
func (m *Manager) settleKill(ctx context.Context, rec *record, id string, srv api.Server) api.Server {
	for i := 0; i < 10 && srv.ExitCode != nil && *srv.ExitCode == 137 && srv.Reason != "oom_killed"; i++ {
		select {
		case <-ctx.Done():
			return srv
		case <-time.After(50 * time.Millisecond):
		}
		c, err := m.rt.Inspect(ctx, id)
		if err != nil {
			return srv
		}
		m.mu.Lock()
		if rec.containerID == id {
			m.observeLocked(rec, c)
			srv = rec.srv
		}
		m.mu.Unlock()
	}
	return srv
}

// logTail is the end of a container's log, bounded in lines and bytes, with
// every secret value replaced and control characters dropped. It is written
// for the person on the spawn page; an error reading it yields "".
func (m *Manager) logTail(ctx context.Context, id string, secrets []string) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := m.rt.Logs(ctx, id, logTailLines)
	if err != nil {
		m.log.Warn("reading the log of a failed server", "container_id", short(id), "err", err)
		return ""
	}
	return redactTail(out, secrets)
}

// redactTail bounds and cleans a log tail; see logTail.
func redactTail(out string, secrets []string) string {
	for _, s := range secrets {
		out = strings.ReplaceAll(out, s, "[redacted]")
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) > logTailLines {
		lines = lines[len(lines)-logTailLines:]
	}
	for i, l := range lines {
		l = strings.Map(func(r rune) rune {
			if r == '\t' {
				return ' '
			}
			if r < 0x20 || r == 0x7f {
				return -1
			}
			return r
		}, strings.ToValidUTF8(l, "?"))
		if len(l) > logLineMax {
			l = strings.ToValidUTF8(l[:logLineMax], "") + "…"
		}
		lines[i] = l
	}
	return strings.TrimSpace(strings.Join(lines, "\n"))
}

// secretValues are the values of a container's environment that must never
// be shown: tokens, secrets, passwords, keys.
func secretValues(env []string) []string {
	var out []string
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || len(v) < 6 {
			continue
		}
		uk := strings.ToUpper(k)
		for _, w := range []string{"TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL"} {
			if strings.Contains(uk, w) {
				out = append(out, v)
				break
			}
		}
	}
	// Longest first, so a secret that contains another is replaced whole.
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// create creates the container, handling a name that is already taken: a
// stale container of ours is removed and the create retried; a running one of
// ours is adopted; anything else is a conflict an admin must resolve.
func (m *Manager) create(ctx context.Context, spec ContainerSpec, log *slog.Logger) (id string, adopted bool, err error) {
	for attempt := 0; ; attempt++ {
		id, err := m.rt.Create(ctx, spec)
		if err == nil {
			return id, false, nil
		}
		if !errdefs.IsConflict(err) || attempt >= 3 {
			return "", false, m.engineErr("creating the container", err)
		}
		c, ierr := m.rt.Inspect(ctx, spec.Name)
		if errdefs.IsNotFound(ierr) {
			continue
		}
		if ierr != nil {
			return "", false, m.engineErr("inspecting a container with the same name", ierr)
		}
		l := c.Labels
		if l[LabelManaged] != "true" || l[LabelInstance] != m.cfg.Instance || l[LabelUser] != spec.Labels[LabelUser] || l[LabelServer] != spec.Labels[LabelServer] {
			return "", false, api.Errorf(api.CodeConflict, "a container named %s exists that spawnd did not create; remove or rename it", spec.Name)
		}
		if c.State == EngineRunning {
			log.Info("adopting a running container with the server's name", "container_id", short(c.ID))
			return c.ID, true, nil
		}
		log.Info("removing a stale container with the server's name", "container_id", short(c.ID), "state", c.State)
		if err := m.rt.Remove(ctx, c.ID, 0); err != nil {
			return "", false, m.engineErr("removing a stale container", err)
		}
	}
}

func (m *Manager) engineErr(doing string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return err
	}
	if errdefs.IsUnavailable(err) || isConnErr(err) {
		return fmt.Errorf("%s: %w", doing, api.Errorf(api.CodeUnavailable, "the container engine is not reachable (%s)", doing))
	}
	return fmt.Errorf("%s: %w", doing, err)
}

func isConnErr(err error) bool {
	var ne net.Error
	var oe *net.OpError
	return errors.As(err, &oe) || (errors.As(err, &ne) && ne.Timeout())
}

// observeLocked updates rec from what the engine says of its container.
// m.mu must be held.
func (m *Manager) observeLocked(rec *record, c Container) {
	if rec.containerID != c.ID && rec.probeCancel != nil {
		rec.probeCancel()
		rec.probeCancel = nil
	}
	rec.containerID, rec.engineState, rec.created = c.ID, c.State, c.Created
	rec.tokenHash = c.Labels[LabelHubToken]
	s := &rec.srv
	s.User, s.Server = c.Labels[LabelUser], c.Labels[LabelServer]
	s.Env, s.Profile, s.LockDigest = c.Labels[LabelEnv], c.Labels[LabelProfile], c.Labels[LabelLockDigest]
	s.Image, s.ImageID, s.ContainerID = c.Image, c.ImageID, c.ID
	if !c.Partial || !c.StartedAt.IsZero() {
		s.StartedAt = c.StartedAt
	}
	switch c.State {
	case EngineRunning, EngineRestarting, EnginePaused:
		s.State, s.ExitCode, s.Reason = api.StateRunning, nil, ""
		port, _ := strconv.Atoi(c.Labels[LabelPort])
		if m.cfg.Network.Mode == "publish" {
			s.Host, s.Port = m.cfg.Network.PublishIP, c.HostPort
		} else {
			s.Host, s.Port = c.IP, port
		}
		rec.probeAddr = ""
		if c.IP != "" && port != 0 {
			rec.probeAddr = net.JoinHostPort(c.IP, strconv.Itoa(port))
		}
		// During a start, the start itself probes once it has reported the
		// container started, so "listening" never comes before "started".
		if !s.Ready && rec.probeCancel == nil && (rec.flight == nil || rec.flight.kind != opStart) {
			m.probeLocked(rec)
		}
	case EngineCreated:
		s.State = api.StatePending
	default: // exited, dead, removing
		if c.Partial && rec.engineState == c.State && s.ExitCode != nil {
			break // a listing adds nothing to what an inspect already said
		}
		code := c.ExitCode
		s.ExitCode, s.Ready = &code, false
		if c.Partial {
			s.ExitCode = nil // unknown until the inspect that follows
		}
		switch {
		case c.OOMKilled:
			s.State, s.Reason = api.StateFailed, "oom_killed"
		case code == 0:
			s.State, s.Reason = api.StateStopped, "exited"
		default:
			s.State, s.Reason = api.StateFailed, fmt.Sprintf("exited with code %d", code)
		}
		if c.Error != "" {
			s.Reason += ": " + c.Error
		}
		if rec.probeCancel != nil {
			rec.probeCancel()
			rec.probeCancel = nil
		}
		if rec.progress != nil && (rec.flight == nil || rec.flight.kind != opStart) {
			// During a start, the start itself reports the failure, with the log tail.
			rec.progress.add(api.ProgressEvent{Progress: 100, Step: api.StepFailed, Message: "Server stopped: " + s.Reason, Failed: true})
		}
	}
}

// probeLocked starts a readiness probe of rec's server. m.mu must be held.
func (m *Manager) probeLocked(rec *record) {
	addr := rec.probeAddr
	if addr == "" {
		if rec.srv.Host == "" || rec.srv.Port == 0 {
			return
		}
		host := rec.srv.Host
		if host == "0.0.0.0" {
			host = "127.0.0.1"
		}
		addr = net.JoinHostPort(host, strconv.Itoa(rec.srv.Port))
	}
	id := rec.containerID
	if rec.progress == nil {
		rec.progress = newProgressLog()
		rec.progress.add(api.ProgressEvent{Progress: 70, Step: api.StepStarted, Message: "Server is running"})
	}
	prog := rec.progress
	ctx, cancel := context.WithTimeout(m.baseCtx, m.cfg.StartTimeout)
	rec.probeCancel = cancel
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		defer cancel()
		// A refused connect costs microseconds: try every 10 ms during the
		// first seconds of a boot (a start answers when the port opens, so
		// the interval is latency the user waits), then every 50 ms.
		began := time.Now()
		for {
			if err := m.Dial(ctx, addr); err == nil {
				break
			}
			wait := 10 * time.Millisecond
			if time.Since(began) > 3*time.Second {
				wait = 50 * time.Millisecond
			}
			select {
			case <-ctx.Done():
				if errors.Is(ctx.Err(), context.DeadlineExceeded) {
					prog.add(api.ProgressEvent{Progress: 100, Step: api.StepFailed, Failed: true,
						Message: fmt.Sprintf("The server did not open its port within %s", m.cfg.StartTimeout)})
					// Failed, not "running, not ready" for ever: the hub's poll
					// ends the spawn, and a WaitReady returns.
					m.mu.Lock()
					if rec.containerID == id && rec.srv.State == api.StateRunning && !rec.srv.Ready {
						rec.srv.State = api.StateFailed
						rec.srv.Reason = fmt.Sprintf("did not listen on its port within start_timeout (%s)", m.cfg.StartTimeout)
						rec.probeCancel = nil
					}
					m.mu.Unlock()
				}
				return
			case <-time.After(wait):
			}
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		if rec.containerID != id || rec.srv.State != api.StateRunning {
			return
		}
		rec.srv.Ready = true
		rec.probeCancel = nil
		prog.add(api.ProgressEvent{Progress: 100, Step: api.StepListening, Message: "Server is listening", Ready: true})
	}()
}

func dialTCP(ctx context.Context, addr string) error {
	d := net.Dialer{Timeout: time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return conn.Close()
}

// Status returns what the daemon knows of one server, from memory.
func (m *Manager) Status(user, server string) (api.Server, error) {
	if err := m.checkSynced(); err != nil {
		return api.Server{}, err
	}
	if err := ValidateUser(user); err != nil {
		return api.Server{}, err
	}
	if err := ValidateServerName(server); err != nil {
		return api.Server{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	rec := m.servers[key{user, server}]
	if rec == nil {
		return api.Server{}, api.Errorf(api.CodeNotFound, "no such server")
	}
	return m.withOutdated(rec.srv), nil
}

// withOutdated marks a server whose lock digest is not its env's current one.
func (m *Manager) withOutdated(s api.Server) api.Server {
	if env, ok := m.envs.get(s.Env); ok && s.LockDigest != env.LockDigest && s.State != api.StateFailed {
		s.Outdated = true
	}
	return s
}

// List returns every server, sorted by user and server name; before the
// first sync with the engine it fails like Status.
func (m *Manager) List() ([]api.Server, error) {
	if err := m.checkSynced(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	out := make([]api.Server, 0, len(m.servers))
	for _, rec := range m.servers {
		out = append(out, rec.srv)
	}
	m.mu.Unlock()
	for i := range out {
		out[i] = m.withOutdated(out[i])
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].User != out[j].User {
			return out[i].User < out[j].User
		}
		return out[i].Server < out[j].Server
	})
	return out, nil
}

// Progress calls fn with every progress event of the server's current (or
// last) start, from the first, until it is ready or failed.
func (m *Manager) Progress(ctx context.Context, user, server string, fn func(api.ProgressEvent) error) error {
	if err := m.checkSynced(); err != nil {
		return err
	}
	if err := ValidateUser(user); err != nil {
		return err
	}
	if err := ValidateServerName(server); err != nil {
		return err
	}
	m.mu.Lock()
	rec := m.servers[key{user, server}]
	var log *progressLog
	if rec != nil {
		log = rec.progress
		if log == nil {
			log = closedLog(api.ProgressEvent{Progress: 100, Step: string(rec.srv.State), Message: "Server is " + string(rec.srv.State), Ready: rec.srv.Ready, Failed: rec.srv.State == api.StateFailed})
		}
	}
	m.mu.Unlock()
	if log == nil {
		return api.Errorf(api.CodeNotFound, "no such server")
	}
	return log.Follow(ctx, fn)
}

// Stop removes the server's container (SIGTERM, then SIGKILL after
// stop_grace) and forgets the server. It never touches the home.
func (m *Manager) Stop(ctx context.Context, user, server string) (api.Server, error) {
	if err := m.checkSynced(); err != nil {
		return api.Server{}, err
	}
	if err := ValidateUser(user); err != nil {
		return api.Server{}, err
	}
	if err := ValidateServerName(server); err != nil {
		return api.Server{}, err
	}
	k := key{user, server}
	for {
		m.mu.Lock()
		rec := m.servers[k]
		if rec == nil {
			m.mu.Unlock()
			return api.Server{}, api.Errorf(api.CodeNotFound, "no such server")
		}
		if f := rec.flight; f != nil {
			m.mu.Unlock()
			srv, err := f.wait(ctx)
			if f.kind == opStop {
				return srv, err
			}
			if ctx.Err() != nil {
				return api.Server{}, ctx.Err()
			}
			continue
		}
		f := &flight{kind: opStop, done: make(chan struct{})}
		rec.flight = f
		id := rec.containerID
		if rec.probeCancel != nil {
			rec.probeCancel()
			rec.probeCancel = nil
		}
		m.mu.Unlock()

		var err error
		if id != "" {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.StopGrace+30*time.Second)
			err = m.rt.Remove(rctx, id, m.cfg.StopGrace)
			cancel()
		}
		m.mu.Lock()
		rec.flight = nil
		srv := rec.srv
		if err != nil {
			f.err = m.engineErr("removing the container", err)
			m.log.Error("stop failed", "user", bound(user), "server", bound(server), "err", err)
		} else {
			delete(m.servers, k)
			srv.State, srv.Ready, srv.Reason = api.StateStopped, false, "stopped"
			m.metrics.stops.Inc()
			m.log.Info("server stopped", "user", bound(user), "server", bound(server))
		}
		f.srv = srv
		close(f.done)
		m.mu.Unlock()
		return srv, f.err
	}
}

// DeleteHome deletes a user's home: the explicit admin action, and the only
// way a home is ever deleted. It is refused while any server of the user
// exists.
func (m *Manager) DeleteHome(ctx context.Context, user string) error {
	if err := m.checkSynced(); err != nil {
		return err
	}
	if err := ValidateUser(user); err != nil {
		return err
	}
	m.mu.Lock()
	for k, rec := range m.servers {
		if k.user == user && (rec.containerID != "" || rec.flight != nil) {
			m.mu.Unlock()
			name := k.server
			if name == "" {
				name = "the default server"
			}
			return api.Errorf(api.CodeConflict, "the user has a server (%s, %s); stop it before deleting the home", bound(name), rec.srv.State)
		}
	}
	if m.deleting[user] {
		m.mu.Unlock()
		return api.Errorf(api.CodeConflict, "the home is already being deleted")
	}
	m.deleting[user] = true
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.deleting, user)
		m.mu.Unlock()
	}()
	if err := m.homes.Delete(user); err != nil {
		return err
	}
	m.log.Warn("home deleted by admin request", "user", bound(user))
	return nil
}

func sharedMounts(sh []SharedFolder) []Mount {
	var out []Mount
	for _, s := range sh {
		out = append(out, Mount{Source: s.Source, Target: s.Target, ReadOnly: s.ReadOnly})
	}
	return out
}

func containsNUL(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return true
		}
	}
	return false
}

// bound keeps a request-supplied string short enough to log.
func bound(s string) string {
	if len(s) <= maxLoggedName {
		return s
	}
	return strings.ToValidUTF8(s[:maxLoggedName], "") + "…"
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
