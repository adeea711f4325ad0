package spawnd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/containerd/errdefs"

	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd/backend"
)

// Start starts the server (user, server) and returns it once it listens.
// It is idempotent: a running server is returned as it is, and concurrent
// starts of one server share one attempt and one container.
func (m *Manager) Start(ctx context.Context, user, server string, req StartRequest) (Server, error) {
	if _, err := m.lookup(user, server); err != nil {
		return Server{}, err
	}
	p, err := resolveStart(m.config(), m.envs.current(), user, server, req)
	if err != nil {
		return Server{}, err
	}
	for {
		m.view.mu.Lock()
		if doing := m.view.homeBusy[user]; doing != "" {
			m.view.mu.Unlock()
			return Server{}, errorf(ErrConflict, "the home of this user is being %s; try again when that has finished", doing)
		}
		rec := m.view.servers[p.key]
		if rec != nil && rec.flight != nil {
			f := rec.flight
			m.view.mu.Unlock()
			srv, err := f.wait(ctx)
			if f.kind == opStart {
				m.metrics.starts.WithLabelValues(startJoined).Inc()
				return srv, err
			}
			if ctx.Err() != nil {
				return Server{}, ctx.Err()
			}
			continue // a stop finished: start afresh
		}
		if rec != nil && rec.srv.State == StateRunning && (p.tokenHash == "" || p.tokenHash == rec.tokenHash) {
			srv, id := rec.srv, rec.containerID
			m.view.mu.Unlock()
			m.metrics.starts.WithLabelValues(startRunning).Inc()
			if srv.Ready {
				return srv, nil
			}
			// Running but not yet listening (a start from before a daemon
			// restart): answer when it listens, as a fresh start would.
			wctx, cancel := context.WithTimeout(ctx, m.cfg.StartTimeout)
			err := m.waitListening(wctx, rec, id, secretValues(p.environment))
			cancel()
			if err != nil {
				return Server{}, err
			}
			return m.Status(user, server)
		}
		// A running container that holds another hub token than this start
		// gives (the hub issued a new one and may have revoked the old) is
		// replaced: never hand back a server whose token the hub no longer honours.
		if rec == nil {
			rec = &record{}
			m.view.servers[p.key] = rec
		}
		f := rec.begin(opStart)
		oldID := rec.containerID
		rec.progress = newProgressLog()
		rec.srv = Server{
			User: user, Server: server, State: StatePending,
			Env: p.envName, Profile: p.profileName, LockDigest: p.env.LockDigest, Image: p.env.Image,
		}
		m.view.mu.Unlock()

		m.bg.Add(1)
		go func() {
			defer m.bg.Done()
			m.runStart(p, rec, f, oldID)
		}()
		return f.wait(ctx)
	}
}

// runStart runs one start in the background (a hub that gives up waiting
// does not cut it off) and lands its flight.
func (m *Manager) runStart(p startPlan, rec *record, f *flight, oldID string) {
	ctx, cancel := context.WithCancel(m.baseCtx)
	defer cancel()
	began := time.Now()
	log := m.log.With("user", bound(p.key.user), "server", bound(p.key.server), "env", p.envName)
	srv, err := m.doStart(ctx, p, rec, oldID, log)

	m.view.mu.Lock()
	defer m.view.mu.Unlock()
	rec.end()
	if err != nil {
		msg := Message(err)
		if errors.Is(err, context.DeadlineExceeded) {
			msg = fmt.Sprintf("the start did not finish within start_timeout (%s)", m.cfg.StartTimeout)
		}
		if KindOf(err) == nil {
			log.Error("start failed", "err", err)
		} else {
			log.Warn("start refused", "err", err)
		}
		rec.containerID, rec.engineState = "", ""
		rec.srv.State = StateFailed
		rec.srv.Reason = "start failed: " + msg
		rec.srv.LogTail = ""
		if ee := (*exitError)(nil); errors.As(err, &ee) {
			rec.srv.ExitCode, rec.srv.LogTail = ee.code, ee.tail
		}
		rec.srv.Ready = false
		rec.progress.add(ProgressEvent{Progress: 100, Step: StepFailed, Message: "Start failed: " + msg, Failed: true})
		m.metrics.starts.WithLabelValues(startFailure).Inc()
		m.metrics.failures.WithLabelValues(failureReason(err)).Inc()
		m.metrics.startSeconds.WithLabelValues(startFailure).Observe(time.Since(began).Seconds())
		f.land(srv, err)
		return
	}
	m.metrics.starts.WithLabelValues(startSuccess).Inc()
	m.metrics.startSeconds.WithLabelValues(startSuccess).Observe(time.Since(began).Seconds())
	log.Info("server started", "container_id", short(srv.ContainerID), "elapsed", time.Since(began).Round(time.Millisecond))
	f.land(rec.srv, nil)
}

func (m *Manager) doStart(ctx context.Context, p startPlan, rec *record, oldID string, log *slog.Logger) (Server, error) {
	prog := rec.progress
	prog.add(ProgressEvent{Progress: 0, Step: StepAccepted, Message: "Server requested"})
	if n := m.takeNotice(p.key); n != "" {
		prog.add(ProgressEvent{Progress: 1, Step: StepNotice, Message: n})
		log.Info("the start tells the user their env was updated by a rollout")
	}

	// The image first, outside admission: a pull or a build waits on the
	// network and the builder, not on the CPU admission guards.
	ictx, icancel := context.WithTimeout(ctx, m.cfg.StartTimeout)
	err := m.ensureImage(ictx, p, prog)
	icancel()
	if err != nil {
		return Server{}, err
	}

	// A warm server of the start's pool, if one is ready, boots in a tenth
	// of a cold boot's CPU: it does not queue for admission.
	if m.pool != nil {
		m.pool.booting.Add(1)
		defer func() {
			m.pool.booting.Add(-1)
			m.pool.wake() // refills may begin
		}()
	}
	w := m.takeWarm(p)
	release := func() {}
	defer func() { release() }()
	if w == nil {
		rel, err := m.admission(ctx)
		if err != nil {
			return Server{}, err
		}
		release = rel
	} else {
		defer func() {
			if w != nil { // not handed over: nobody's, and never back in the pool
				m.discardWarm(ctx, rec, w)
			}
		}()
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.StartTimeout)
	defer cancel()

	home, err := m.homes.Ensure(ctx, backend.HomeSpec{User: p.key.user, Dir: Escape(p.key.user), UID: p.env.User.UID, GID: p.env.User.GID,
		Image: p.env.Image, Placement: p.profile.Placement, Labels: m.selector()})
	if err != nil {
		return Server{}, storeErr(err)
	}
	for _, sh := range p.shared {
		if fi, err := os.Stat(sh.Source); err != nil || !fi.IsDir() {
			return Server{}, &Error{Kind: ErrConflict, Msg: "a shared folder of the user's team does not exist on the host; an admin must create it (the daemon's log names it)",
				Cause: fmt.Errorf("shared folder %s", sh.Source)}
		}
	}
	prog.add(ProgressEvent{Progress: 30, Step: StepHome, Message: "Home directory ready"})

	if oldID != "" {
		if err := m.rt.Remove(ctx, oldID, 0); err != nil {
			return Server{}, m.engineErr("removing the previous container", err)
		}
	}
	if w != nil {
		srv, err := m.startWarm(ctx, p, rec, w, home)
		if err == nil {
			w = nil
			return srv, nil
		}
		log.Warn("the warm server could not take the start; booting a fresh one", "container_id", short(w.id), "err", err)
		prog.add(ProgressEvent{Progress: 35, Step: StepHome, Message: "The warm server could not take over; starting a fresh server"})
		m.discardWarm(ctx, rec, w)
		w = nil
		rel, err := m.admission(ctx)
		if err != nil {
			return Server{}, err
		}
		release = rel
	}
	spec := containerSpec(&m.cfg, p, home)
	if home.Owner != nil {
		// The person's home, owned by them on the host, reaches the server
		// (the image's user) through an idmapped mount on a slot of its own.
		slot, err := m.slots.attach(home, p.env.User.UID, p.env.User.GID, spec.Name)
		if err != nil {
			return Server{}, err
		}
		defer func() {
			m.slots.settled(slot)
			m.slots.wake() // a failed start leaves a slot no container names
		}()
		spec.Mounts[0].Source = m.slots.path(slot)
		spec.Labels[labels.HomeSlot] = slot
	}
	spec.Waiting = func(msg string) {
		prog.add(ProgressEvent{Progress: 40, Step: StepPlacing, Message: msg})
	}
	c, adopted, err := m.run(ctx, spec, log)
	if err != nil {
		return Server{}, err
	}
	m.view.mu.Lock()
	rec.containerID, rec.created = c.ID, time.Now()
	rec.srv.ContainerID = c.ID
	rec.secrets = secretValues(spec.Env)
	m.view.mu.Unlock()
	prog.add(ProgressEvent{Progress: 50, Step: StepCreated, Message: "Container created"})

	if adopted {
		// An adopted container is seen as it is now.
		if c, err = m.rt.Inspect(ctx, c.ID); err != nil {
			return Server{}, m.engineErr("inspecting the adopted container", err)
		}
	}
	prog.add(ProgressEvent{Progress: 70, Step: StepStarted, Message: "Container started; waiting for the server to listen"})
	m.view.mu.Lock()
	m.observeLocked(rec, c)
	if e, ok := rec.ended[c.ID]; ok {
		m.observeLocked(rec, e) // it ended before the engine answered the start
	}
	if rec.srv.State == StateRunning && !rec.srv.Ready && rec.probe == nil {
		m.probeLocked(rec)
	}
	m.view.mu.Unlock()
	if err := m.waitListening(ctx, rec, c.ID, secretValues(spec.Env)); err != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if rerr := m.rt.Remove(cctx, c.ID, 0); rerr != nil {
			log.Error("removing a container whose start failed", "container_id", short(c.ID), "err", rerr)
		}
		return Server{}, err
	}
	m.view.mu.Lock()
	defer m.view.mu.Unlock()
	return rec.srv, nil
}

// admission waits for the start's turn: at most max_concurrent_starts
// servers boot at once, each from the engine's create until its port
// listens (or it fails). Booting a single-user server is CPU-bound;
// letting a whole class boot at once makes every one of them slow. A pool's
// refill waits while any start does.
func (m *Manager) admission(ctx context.Context) (release func(), err error) {
	qctx, qcancel := context.WithTimeout(ctx, m.cfg.StartTimeout)
	defer qcancel()
	m.metrics.queued.Inc()
	defer m.metrics.queued.Dec()
	if m.pool != nil {
		m.pool.waiting.Add(1)
		defer m.pool.waiting.Add(-1)
	}
	select {
	case m.admit <- struct{}{}:
		return func() { <-m.admit }, nil
	case <-qctx.Done():
		if ctx.Err() == nil {
			return nil, errorf(ErrUnavailable, "%d servers are booting and this start waited %s for its turn; try again shortly (max_concurrent_starts)", m.cfg.MaxConcurrentStarts, m.cfg.StartTimeout)
		}
		return nil, ctx.Err()
	}
}

// run runs the container, handling a name that is already taken: a stale
// container of ours is removed and the run retried; a running one of ours is
// adopted; anything else is a conflict an admin must resolve.
func (m *Manager) run(ctx context.Context, spec backend.ContainerSpec, log *slog.Logger) (c backend.Container, adopted bool, err error) {
	for attempt := 0; ; attempt++ {
		c, err := m.rt.Run(ctx, spec)
		if err == nil {
			return c, false, nil
		}
		if !errdefs.IsConflict(err) || attempt >= 3 {
			return c, false, m.engineErr("starting the container", err)
		}
		old, ierr := m.rt.Inspect(ctx, spec.Name)
		if errdefs.IsNotFound(ierr) {
			continue
		}
		if ierr != nil {
			return c, false, m.engineErr("inspecting a container with the same name", ierr)
		}
		l := old.Labels
		if l[labels.Managed] != "true" || l[labels.Instance] != m.cfg.Instance || l[labels.User] != spec.Labels[labels.User] || l[labels.Server] != spec.Labels[labels.Server] {
			return c, false, errorf(ErrConflict, "a container named %s exists that spawnd did not create; remove or rename it", spec.Name)
		}
		if old.State == backend.Running {
			log.Info("adopting a running container with the server's name", "container_id", short(old.ID))
			return old, true, nil
		}
		log.Info("removing a stale container with the server's name", "container_id", short(old.ID), "state", old.State)
		if err := m.rt.Remove(ctx, old.ID, 0); err != nil {
			return c, false, m.engineErr("removing a stale container", err)
		}
	}
}

// exitError is a server that exited, or never listened, during its start.
type exitError struct {
	code *int
	msg  string
	tail string // the end of the server's log, also in msg
}

func (e *exitError) Error() string { return e.msg }

// Is makes an exitError an ErrServerFailed.
func (e *exitError) Is(target error) bool { return target == ErrServerFailed }

// Unwrap gives the message to Message: the person on the spawn page reads it.
func (e *exitError) Unwrap() error { return &Error{Kind: ErrServerFailed, Msg: e.msg} }

// waitListening waits until the server in container id accepts connections
// on its port, and fails as soon as the container ends first, with its exit
// code and the last lines of its log (secrets removed).
func (m *Manager) waitListening(ctx context.Context, rec *record, id string, secrets []string) error {
	tick := time.NewTicker(5 * time.Millisecond) // reads memory only; the answer comes within 5 ms of the probe
	defer tick.Stop()
	for {
		m.view.mu.Lock()
		srv, cur := rec.srv, rec.containerID
		m.view.mu.Unlock()
		switch {
		case cur != id:
			return errorf(ErrConflict, "the server's container was replaced during its start")
		case srv.Ready:
			return nil
		case srv.State == StateFailed || srv.State == StateStopped:
			srv = m.settleKill(ctx, rec, id, srv)
			msg := "the server " + srv.Reason + " before it listened"
			tail := m.logTail(ctx, id, secrets)
			if tail != "" {
				msg += "; its last log lines:\n" + tail
			}
			return &exitError{code: srv.ExitCode, msg: msg, tail: tail}
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				msg := fmt.Sprintf("the server did not listen on its port within start_timeout (%s)", m.cfg.StartTimeout)
				tail := m.logTail(context.WithoutCancel(ctx), id, secrets)
				if tail != "" {
					msg += "; its last log lines:\n" + tail
				}
				return &exitError{msg: msg, tail: tail}
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
func (m *Manager) settleKill(ctx context.Context, rec *record, id string, srv Server) Server {
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
		m.view.mu.Lock()
		if rec.containerID == id {
			m.observeLocked(rec, c)
			srv = rec.srv
		}
		m.view.mu.Unlock()
	}
	return srv
}

// ensureImage makes sure the env's image is on the engine: present, or
// pulled as the env's pull policy says (with its progress on the spawn
// page), or the start fails saying what to do.
func (m *Manager) ensureImage(ctx context.Context, p startPlan, prog *progressLog) error {
	puller := m.puller
	pull := puller != nil && p.env.Pull != PullNever && p.env.Spec == ""
	err := m.rt.CheckImage(ctx, p.env.Image)
	switch {
	case err == nil && !(pull && p.env.Pull == PullAlways):
		prog.add(ProgressEvent{Progress: 15, Step: StepImage, Message: fmt.Sprintf("Env %s: image present", p.envName)})
		return nil
	case err != nil && !errdefs.IsNotFound(err):
		return m.engineErr("checking the image", err)
	case err != nil && p.env.Spec != "" && m.build != nil:
		return m.waitForBuild(ctx, p, prog)
	case err != nil && !pull:
		switch {
		case p.env.Spec != "":
			return errorf(ErrConflict, "the image %s of env %q is not on the engine; build it first (spawnd build)", p.env.Image, p.envName)
		case p.env.Pull == PullNever:
			return errorf(ErrConflict, "the image %s of env %q is not on the engine, and the env's pull policy is never; pull it (docker pull) or set pull: if-not-present", p.env.Image, p.envName)
		}
		return errorf(ErrConflict, "the image %s of env %q is not where this engine runs it from; put it there (spawnd image push to the registry)", p.env.Image, p.envName)
	}
	prog.add(ProgressEvent{Progress: 5, Step: StepImage, Message: fmt.Sprintf("Env %s: pulling %s", p.envName, p.env.Image)})
	last, pullBegan := time.Time{}, time.Now()
	perr := puller.Pull(ctx, p.env.Image, func(pp backend.PullProgress) {
		if time.Since(last) < 500*time.Millisecond && pp.Done < pp.Layers {
			return
		}
		last = time.Now()
		msg := fmt.Sprintf("Env %s: pulling the image, %d of %d layers", p.envName, pp.Done, pp.Layers)
		if pp.Total > 0 {
			msg += fmt.Sprintf(", %d of %d MiB", pp.Bytes>>20, pp.Total>>20)
		}
		prog.add(ProgressEvent{Progress: 5 + 10*pp.Done/max(pp.Layers, 1), Step: StepImage, Message: msg})
	})
	status := startSuccess
	if perr != nil {
		status = startFailure
	}
	m.metrics.pullSeconds.WithLabelValues(status).Observe(time.Since(pullBegan).Seconds())
	switch {
	case perr == nil:
		prog.add(ProgressEvent{Progress: 15, Step: StepImage, Message: fmt.Sprintf("Env %s: image pulled", p.envName)})
		return nil
	case errors.Is(perr, context.DeadlineExceeded), errors.Is(perr, context.Canceled):
		return perr
	case errdefs.IsUnauthorized(perr), errdefs.IsNotFound(perr):
		return &Error{Kind: ErrConflict, Msg: fmt.Sprintf("the image of env %q could not be pulled; an admin must fix its registry or its credentials (the daemon's log says which)", p.envName), Cause: perr}
	case errdefs.IsUnavailable(perr):
		return &Error{Kind: ErrUnavailable, Msg: fmt.Sprintf("the registry of env %q is not reachable; try again later", p.envName), Cause: perr}
	}
	return internal(perr, "pulling the image of env %q failed; see the daemon's log", p.envName)
}
