package spawnd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/egress"
	"github.com/spawnd/spawnd/spawnd/idmap"
)

// Manager runs the lifecycle of user servers on one backend.Runtime. Its
// work is split by room: start.go starts, stop.go stops and deletes homes,
// reconcile.go keeps the view in step with the engine, resolve.go turns a
// request into a plan; this file holds the view and answers from it.
type Manager struct {
	cfg Config                  // as started; its policy part is pol's (reload.go)
	pol atomic.Pointer[choices] // envs' defaults, profiles and teams: what a reload changes
	rt  backend.Runtime
	// The backend's optional capabilities (backend.Set); nil: it lacks one.
	puller   backend.Puller
	follower backend.LogFollower
	homes    HomeStore
	pinned   bool // homes are a node-pinned store (WithHomes), not homes_root
	log      *slog.Logger
	admit    chan struct{}
	finish   *turns // warm servers finishing their boot, in turn (pool.go: startWarm)
	// Dial checks that a server's port accepts connections; tests may replace it.
	Dial func(ctx context.Context, addr string) error

	baseCtx    context.Context
	cancelBase context.CancelFunc
	bg         sync.WaitGroup

	view     view           // the servers and the homes in use (view.go)
	notices  noticeBoard    // what a server's next start tells its user (a rollout moved it)
	activity ActivitySource // the hub's activity, for rollouts of idle servers

	build      EnvBuild      // nil: a start of an env without an image fails
	buildLimit time.Duration // how long one such build may run
	builds     buildTable    // env -> its build that starts wait for

	engineUp atomic.Bool
	envs     *envTable
	gateway  atomic.Value // string: the user network's gateway
	synced   chan struct{}
	syncOnce sync.Once
	metrics  *metrics
	fence    Fence                                                                  // nil: no egress rules
	slots    *slots                                                                 // home_owner system or range, or pools: the homes' mount points
	pool     *pool                                                                  // pools: the warm servers (pool.go)
	promote  func(ctx context.Context, id string, spec backend.ContainerSpec) error // nil: the backend gives no CPU weight
	owned    *ownedHomes                                                            // home_owner system or range: who owns each home
}

// Fence keeps the host's egress rules for the user network (spawnd/egress
// implements it with nftables).
type Fence interface {
	Apply(ctx context.Context, r egress.Rules) error
}

// Option is something of the daemon's that a Manager uses besides its
// backend, given to NewManager.
type Option func(*Manager)

// WithFence makes every sync put the egress rules the config asks for
// (network.egress) in place before any server starts.
func WithFence(f Fence) Option { return func(m *Manager) { m.fence = f } }

// WithHomes keeps users' homes in s instead of under homes_root on the
// daemon's host (the swarm backend's node-pinned homes).
func WithHomes(s HomeStore) Option { return func(m *Manager) { m.homes, m.pinned = s, true } }

// WithActivity lets rollouts move idle servers only.
func WithActivity(a ActivitySource) Option { return func(m *Manager) { m.activity = a } }

// WithBuilds lets a start whose env (built from a spec) has no image yet
// build it and wait, instead of failing with "build it first": one build
// per env at a time, shared by every start that waits for it, each of
// which shows the build's progress on its spawn page. A build gets at most
// limit (default 1h).
func WithBuilds(b EnvBuild, limit time.Duration) Option {
	return func(m *Manager) {
		if limit <= 0 {
			limit = time.Hour
		}
		m.build, m.buildLimit = b, limit
	}
}

// NewManager returns a Manager for a config (defaults filled, then
// validated) on a backend: its Runtime, and the optional capabilities it
// has (a start pulls only with a Puller, a log is followed only with a
// LogFollower). reg may be nil.
func NewManager(cfg Config, b backend.Set, log *slog.Logger, reg prometheus.Registerer, opts ...Option) (*Manager, error) {
	if b.Runtime == nil {
		return nil, errors.New("spawnd: a backend without a Runtime")
	}
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
		rt:         b.Runtime,
		puller:     b.Puller,
		follower:   b.Logs,
		homes:      hostHomes{homes},
		log:        log,
		admit:      make(chan struct{}, cfg.MaxConcurrentStarts),
		finish:     newTurns(cfg.MaxConcurrentStarts),
		Dial:       dialTCP,
		baseCtx:    ctx,
		cancelBase: cancel,
		view:       newView(),
		synced:     make(chan struct{}),
		envs:       newEnvTable(cfg.Envs, log),
	}
	for _, o := range opts {
		o(m)
	}
	if cfg.HomeOwner != HomeOwnerEnv {
		if m.pinned {
			cancel()
			return nil, fmt.Errorf("home_owner: %s gives homes their owners on the daemon's host; node-pinned homes cannot have them (use home_owner: env)", cfg.HomeOwner)
		}
		if err := m.useOwnedHomes(homes); err != nil {
			cancel()
			return nil, err
		}
	}
	m.promote = b.Promote
	if err := m.usePools(b); err != nil {
		cancel()
		return nil, err
	}
	m.pol.Store(choicesOf(&cfg))
	m.metrics = newMetrics(m, reg)
	return m, nil
}

// useOwnedHomes gives each person's home its own owner on the host
// (home_owner system or range), and checks once that idmapped mounts work
// here.
func (m *Manager) useOwnedHomes(homes *Homes) error {
	o, err := newOwnedHomes(&m.cfg, homes)
	if err != nil {
		return err
	}
	if err := sameMountNamespace(); err != nil {
		return fmt.Errorf("home_owner %s: %w", o.mode, err)
	}
	if m.slots, err = newSlots(m.cfg.SlotsDir, m.log); err != nil {
		return err
	}
	probe := idmap.Mapping{HostUID: 65533, HostGID: 65533, InUID: 1000, InGID: 100}
	if o.mode == HomeOwnerRange {
		probe.HostUID, probe.HostGID = o.uids.First, o.uids.First
	}
	if err := m.slots.probe(m.cfg.HomesRoot, probe); err != nil {
		return fmt.Errorf("home_owner %s needs idmapped mounts, and this host cannot make one of homes_root %s: %w; use home_owner: env, or a kernel (5.12+) and file system that can", o.mode, m.cfg.HomesRoot, err)
	}
	m.homes, m.owned = o, o
	return nil
}

// Config returns the validated config, with the policy (profiles, teams,
// defaults) of the last reload.
func (m *Manager) Config() Config { return *m.config() }

// EngineUp reports whether the last contact with the engine succeeded.
func (m *Manager) EngineUp() bool { return m.engineUp.Load() }

// Synced is closed once the first reconcile with the engine has finished.
func (m *Manager) Synced() <-chan struct{} { return m.synced }

// errNotSynced is the answer to anything that reads or changes servers before
// the first sync with the engine: until then the daemon does not know which
// servers exist, and "not found" would be a lie that makes a hub forget a
// running server.
var errNotSynced = errorf(ErrUnavailable, "the daemon has not synced with the container engine yet (is the engine up?); try again shortly")

var errNoServer = errorf(ErrNotFound, "no such server")

// lookup checks the names and that the view is synced, and returns the
// server's key. It is how every call about one server begins.
func (m *Manager) lookup(user, server string) (key, error) {
	select {
	case <-m.synced:
	default:
		return key{}, errNotSynced
	}
	if err := ValidateUser(user); err != nil {
		return key{}, err
	}
	if err := ValidateServerName(server); err != nil {
		return key{}, err
	}
	return key{user, server}, nil
}

// Close stops background work (readiness probes, in-flight starts). User
// containers keep running.
func (m *Manager) Close() {
	m.cancelBase()
	m.bg.Wait()
}

func (m *Manager) selector() map[string]string {
	return map[string]string{labels.Managed: "true", labels.Instance: m.cfg.Instance}
}

// engineErr classifies an engine failure: unreachable is ErrUnavailable,
// anything else internal (its text goes to the log, not to the hub).
func (m *Manager) engineErr(doing string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return err
	}
	if up := (*backend.Unplaceable)(nil); errors.As(err, &up) {
		return &Error{Kind: ErrUnavailable, Msg: "No machine can run this server now: " + up.Reason, Cause: err}
	}
	if errdefs.IsUnavailable(err) || isConnErr(err) {
		return &Error{Kind: ErrUnavailable, Msg: fmt.Sprintf("the container engine is not reachable (%s)", doing), Cause: err}
	}
	return internal(err, "the container engine failed %s; see the daemon's log", doing)
}

func isConnErr(err error) bool {
	var ne net.Error
	var oe *net.OpError
	return errors.As(err, &oe) || (errors.As(err, &ne) && ne.Timeout())
}

// observeLocked updates rec from what the engine says of its container.
// m.mu must be held.
func (m *Manager) observeLocked(rec *record, c backend.Container) {
	c, _ = m.withClaim(c)
	if rec.containerID != c.ID {
		rec.stopProbe()
	}
	rec.containerID, rec.engineState, rec.created = c.ID, string(c.State), c.Created
	rec.tokenHash = c.Labels[labels.HubToken]
	s := &rec.srv
	s.User, s.Server = c.Labels[labels.User], c.Labels[labels.Server]
	s.Env, s.Profile, s.LockDigest = c.Labels[labels.Env], c.Labels[labels.Profile], c.Labels[labels.LockDigest]
	s.Image, s.ImageID, s.ContainerID = c.Image, c.ImageID, c.ID
	if !c.Partial || !c.StartedAt.IsZero() {
		s.StartedAt = c.StartedAt
	}
	switch c.State {
	case backend.Running, backend.Restarting, backend.Paused:
		s.State, s.ExitCode, s.Reason, s.LogTail = StateRunning, nil, "", ""
		if m.cfg.Network.Mode == "publish" {
			s.Host, s.Port = m.cfg.Network.PublishIP, c.HostPort
			if c.HostIP != "" {
				s.Host = c.HostIP // the backend chose the address (Swarm: the node's)
			}
		} else {
			s.Host, s.Port = c.IP, c.Port
		}
		rec.probeAddr = ""
		switch {
		case c.HostIP != "" && c.HostPort != 0:
			// The container's own address may be on another machine's
			// overlay; its published port is where the hub reaches it.
			rec.probeAddr = net.JoinHostPort(c.HostIP, strconv.Itoa(c.HostPort))
		case c.IP != "" && c.Port != 0:
			rec.probeAddr = net.JoinHostPort(c.IP, strconv.Itoa(c.Port))
		}
		// During a start, the start itself probes once it has reported the
		// container started, so "listening" never comes before "started".
		if !s.Ready && rec.probe == nil && !rec.starting() {
			m.probeLocked(rec)
		}
	case backend.Created:
		s.State = StatePending
	default: // exited, dead, removing
		if c.Partial && rec.engineState == string(c.State) && s.ExitCode != nil {
			break // a listing adds nothing to what an inspect already said
		}
		wasRunning := s.State == StateRunning
		code := c.ExitCode
		s.ExitCode, s.Ready = &code, false
		if c.Partial {
			s.ExitCode = nil // unknown until the inspect that follows
		}
		switch {
		case c.OOMKilled:
			s.State, s.Reason = StateFailed, "oom_killed"
		case code == 0:
			s.State, s.Reason = StateStopped, "exited"
		default:
			s.State, s.Reason = StateFailed, fmt.Sprintf("exited with code %d", code)
		}
		if c.Error != "" {
			s.Reason += ": " + c.Error
		}
		rec.stopProbe()
		unasked := wasRunning && rec.flight == nil && s.State == StateFailed && s.ExitCode != nil
		switch {
		case unasked:
			// An exit nobody asked for: its log says why. During a start,
			// the start itself reports the failure, with the log tail.
			m.explainExitLocked(rec, c.ID, "Server stopped: "+s.Reason)
		case rec.progress != nil && !rec.starting():
			rec.progress.add(ProgressEvent{Progress: 100, Step: StepFailed, Message: "Server stopped: " + s.Reason, Failed: true})
		}
	}
}

// explainExitLocked reads the end of the log of a server that failed on
// its own, in the background, and puts it in the server's status (and in
// the last event of its progress, for a reader still on it). m.mu must be
// held.
func (m *Manager) explainExitLocked(rec *record, id, msg string) {
	secrets, prog := rec.secrets, rec.progress
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		tail := m.logTail(m.baseCtx, id, secrets)
		m.view.mu.Lock()
		defer m.view.mu.Unlock()
		if rec.containerID == id && rec.srv.State == StateFailed {
			rec.srv.LogTail = tail
		}
		if prog != nil {
			if tail != "" {
				msg += "; its last log lines:\n" + tail
			}
			prog.add(ProgressEvent{Progress: 100, Step: StepFailed, Message: msg, Failed: true})
		}
	}()
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
		rec.progress.add(ProgressEvent{Progress: 70, Step: StepStarted, Message: "Server is running"})
	}
	prog := rec.progress
	ctx, cancel := context.WithTimeout(m.baseCtx, m.cfg.StartTimeout)
	pr := &probe{cancel: cancel}
	rec.probe = pr
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
					prog.add(ProgressEvent{Progress: 100, Step: StepFailed, Failed: true,
						Message: fmt.Sprintf("The server did not open its port within %s", m.cfg.StartTimeout)})
					// Failed, not "running, not ready" for ever: the hub's poll
					// ends the spawn, and a WaitReady returns.
					m.view.mu.Lock()
					if rec.containerID == id && rec.srv.State == StateRunning && !rec.srv.Ready {
						rec.srv.State = StateFailed
						rec.srv.Reason = fmt.Sprintf("did not listen on its port within start_timeout (%s)", m.cfg.StartTimeout)
					}
					if rec.probe == pr {
						rec.probe = nil
					}
					m.view.mu.Unlock()
				}
				return
			case <-time.After(wait):
			}
		}
		m.view.mu.Lock()
		defer m.view.mu.Unlock()
		if rec.probe == pr {
			rec.probe = nil
		}
		if rec.containerID != id || rec.srv.State != StateRunning {
			return
		}
		rec.srv.Ready = true
		prog.add(ProgressEvent{Progress: 100, Step: StepListening, Message: "Server is listening", Ready: true})
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
func (m *Manager) Status(user, server string) (Server, error) {
	k, err := m.lookup(user, server)
	if err != nil {
		return Server{}, err
	}
	m.view.mu.Lock()
	defer m.view.mu.Unlock()
	rec := m.view.servers[k]
	if rec == nil {
		return Server{}, errNoServer
	}
	return m.withOutdated(rec.srv), nil
}

// withOutdated marks a server whose lock digest is not its env's current one.
func (m *Manager) withOutdated(s Server) Server {
	if env, ok := m.envs.get(s.Env); ok && s.LockDigest != env.LockDigest && s.State != StateFailed {
		s.Outdated = true
	}
	return s
}

// List returns every server, sorted by user and server name; before the
// first sync with the engine it fails like Status.
func (m *Manager) List() ([]Server, error) {
	select {
	case <-m.synced:
	default:
		return nil, errNotSynced
	}
	m.view.mu.Lock()
	out := make([]Server, 0, len(m.view.servers))
	for _, rec := range m.view.servers {
		out = append(out, rec.srv)
	}
	m.view.mu.Unlock()
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
func (m *Manager) Progress(ctx context.Context, user, server string, fn func(ProgressEvent) error) error {
	k, err := m.lookup(user, server)
	if err != nil {
		return err
	}
	m.view.mu.Lock()
	rec := m.view.servers[k]
	var log *progressLog
	if rec != nil {
		log = rec.progress
		if log == nil {
			s := rec.srv
			log = closedLog(ProgressEvent{Progress: 100, Step: Step(s.State), Message: "Server is " + string(s.State), Ready: s.Ready, Failed: s.State == StateFailed})
		}
	}
	m.view.mu.Unlock()
	if log == nil {
		return errNoServer
	}
	return log.Follow(ctx, fn)
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
