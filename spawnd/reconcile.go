package spawnd

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/egress"
)

// Run keeps the in-memory view in step with the engine until ctx ends: it
// subscribes to container events, reconciles with a full listing, then applies
// events as they come. When the engine goes away it retries with backoff and
// reconciles again once it is back, so an engine restart heals by itself. The
// reaper and the env locks' watcher run alongside.
func (m *Manager) Run(ctx context.Context) error {
	go m.reapLoop(ctx)
	if m.slots != nil {
		go m.slots.run(ctx, time.Minute, func(ctx context.Context) ([]backend.Container, error) { return m.rt.List(ctx, m.selector()) })
		m.slots.wake()
	}
	go m.envs.watch(ctx, m.rt.CheckImage)
	if m.pool != nil {
		go m.poolLoop(ctx)
	}
	backoff := 100 * time.Millisecond
	var down time.Time
	for {
		evCtx, cancel := context.WithCancel(ctx)
		events, errs := m.rt.Events(evCtx, m.selector())
		err := m.ensureNetwork(ctx)
		if errdefs.IsInvalidArgument(err) {
			// The engine has a network that contradicts the config: retrying
			// cannot help, and serving on it would be unsafe.
			cancel()
			return err
		}
		if err == nil {
			err = m.Reconcile(ctx)
		}
		if err == nil {
			if !down.IsZero() {
				m.log.Info("engine reachable again; view reconciled", "down_for", time.Since(down).Round(time.Millisecond))
				down = time.Time{}
			}
			m.engineUp.Store(true)
			m.syncOnce.Do(func() { close(m.synced) })
			backoff = 100 * time.Millisecond
			err = m.consume(ctx, events, errs)
		}
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		m.engineUp.Store(false)
		if down.IsZero() {
			down = time.Now()
			m.log.Warn("cannot sync with the engine; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

func (m *Manager) ensureNetwork(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	info, err := m.rt.EnsureNetwork(ctx, backend.NetworkSpec{
		Name:   m.cfg.Network.Name,
		ICC:    m.cfg.Network.ICC,
		Labels: m.selector(),
	})
	if err != nil {
		return fmt.Errorf("ensuring network %s: %w", m.cfg.Network.Name, err)
	}
	if m.fence != nil {
		// No server starts (the view is not synced) until the fence is up.
		if info.Bridge == "" {
			return fmt.Errorf("network %s: the engine names no bridge to fence (network.egress needs a bridge network)", m.cfg.Network.Name)
		}
		rules := egress.Rules{Bridge: info.Bridge, Block: m.cfg.Network.Egress.Blocked(), HostPorts: m.cfg.Network.Egress.hostPorts}
		if err := m.fence.Apply(ctx, rules); err != nil {
			return fmt.Errorf("fencing network %s: %w", m.cfg.Network.Name, err)
		}
	}
	m.gateway.Store(info.Gateway)
	return nil
}

func (m *Manager) consume(ctx context.Context, events <-chan backend.ContainerEvent, errs <-chan error) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errs:
			if err == nil {
				err = errors.New("event stream ended")
			}
			return err
		case ev, ok := <-events:
			if !ok {
				return errors.New("event stream closed")
			}
			m.applyEvent(ctx, ev)
		}
	}
}

func (m *Manager) applyEvent(ctx context.Context, ev backend.ContainerEvent) {
	if ev.Action == "destroy" {
		m.gone(ev.ID)
		return
	}
	ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := m.rt.Inspect(ictx, ev.ID)
	if errdefs.IsNotFound(err) {
		m.gone(ev.ID)
		return
	}
	if err != nil {
		m.log.Warn("inspecting a container after an event", "container_id", short(ev.ID), "action", ev.Action, "err", err)
		return
	}
	m.view.mu.Lock()
	m.adoptLocked(c)
	m.view.mu.Unlock()
	if m.slots != nil && c.Labels[labels.HomeSlot] != "" && (c.State == backend.Exited || c.State == backend.Dead) {
		m.slots.wake() // the server ended: its home's mount goes
	}
}

// adoptLocked applies an observed container to the view. m.mu must be held.
func (m *Manager) adoptLocked(c backend.Container) {
	if c.Labels[labels.Managed] != "true" || c.Labels[labels.Instance] != m.cfg.Instance {
		return
	}
	c, claimed := m.withClaim(c)
	if !claimed {
		if m.pool != nil {
			m.observeWarm(c) // a warm server nobody took
		}
		return
	}
	user := c.Labels[labels.User]
	if ValidateUser(user) != nil {
		return
	}
	k := key{user, c.Labels[labels.Server]}
	rec := m.view.servers[k]
	switch {
	case rec == nil:
		rec = &record{}
		m.view.servers[k] = rec
	case rec.containerID == c.ID:
	case rec.flight != nil:
		// The operation in flight owns the key: this is a container it
		// replaced, or the one it is starting, whose ID it does not know
		// yet. An end is kept for it to read (see record.ended).
		if c.State == backend.Exited || c.State == backend.Dead {
			if rec.ended == nil {
				rec.ended = map[string]backend.Container{}
			}
			rec.ended[c.ID] = c
		}
		return
	case rec.containerID != "" && !c.Created.After(rec.created):
		return // an older container than the one we know
	}
	m.observeLocked(rec, c)
}

// gone forgets a container that the engine no longer has.
func (m *Manager) gone(id string) {
	if m.slots != nil {
		m.slots.wake() // its home's slot, if it had one, is free
	}
	if m.pool != nil {
		m.pool.forget(id)
	}
	m.view.mu.Lock()
	defer m.view.mu.Unlock()
	for k, rec := range m.view.servers {
		if rec.containerID != id {
			continue
		}
		if rec.flight != nil {
			rec.stopProbe()
			rec.containerID = "" // the operation in flight decides what happens
			continue
		}
		m.forgetLocked(k, rec)
	}
}

// Reconcile rebuilds the view from a full listing of the engine's labelled
// containers: it adopts what it did not know and forgets what is gone.
func (m *Manager) Reconcile(ctx context.Context) error {
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cs, err := m.rt.List(lctx, m.selector())
	if err != nil {
		return fmt.Errorf("listing containers: %w", err)
	}
	seen := make(map[string]bool, len(cs))
	var partial []string
	m.view.mu.Lock()
	defer m.view.mu.Unlock()
	for _, c := range cs {
		seen[c.ID] = true
		m.adoptLocked(c)
		if c.Partial {
			partial = append(partial, c.ID)
		}
	}
	for k, rec := range m.view.servers {
		if rec.flight != nil || rec.containerID == "" || seen[rec.containerID] {
			continue
		}
		m.forgetLocked(k, rec)
	}
	m.metrics.reconciles.Inc()
	if len(partial) > 0 {
		m.bg.Add(1)
		go func() {
			defer m.bg.Done()
			m.complete(partial)
		}()
	}
	return nil
}

// complete inspects containers that a listing returned partially, to fill
// in start times, exit codes and OOM kills. Status answers in the meantime
// carry the listing's state.
func (m *Manager) complete(ids []string) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(m.baseCtx, 10*time.Second)
			defer cancel()
			c, err := m.rt.Inspect(ctx, id)
			if err != nil {
				if errdefs.IsNotFound(err) {
					m.gone(id)
				}
				return
			}
			m.view.mu.Lock()
			m.adoptLocked(c)
			m.view.mu.Unlock()
		}()
	}
	wg.Wait()
}

// reapLoop removes containers of ours that were created but never started
// (a start cut off by a crash), once they are older than reap_grace.
func (m *Manager) reapLoop(ctx context.Context) {
	interval := min(m.cfg.ReapGrace/2, 30*time.Second)
	interval = max(interval, 100*time.Millisecond)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.Reap(ctx)
		}
	}
}

// Reap removes half-made containers (created, never started, older than
// reap_grace, no operation in flight) and returns how many it removed. Each
// removal runs as an operation on its server, so a start of that server
// waits for it, and the engine is asked again right before: a container that
// an earlier daemon's last start request got running in the meantime stays.
func (m *Manager) Reap(ctx context.Context) int {
	type victim struct {
		k  key
		id string
	}
	var victims []victim
	m.view.mu.Lock()
	for k, rec := range m.view.servers {
		if rec.flight == nil && rec.engineState == string(backend.Created) && rec.containerID != "" && time.Since(rec.created) > m.cfg.ReapGrace {
			victims = append(victims, victim{k, rec.containerID})
		}
	}
	m.view.mu.Unlock()
	n := 0
	for _, v := range victims {
		if m.reapOne(ctx, v.k, v.id) {
			n++
		}
	}
	return n
}

func (m *Manager) reapOne(ctx context.Context, k key, id string) bool {
	m.view.mu.Lock()
	rec := m.view.servers[k]
	if rec == nil || rec.flight != nil || rec.containerID != id || rec.engineState != string(backend.Created) {
		m.view.mu.Unlock()
		return false
	}
	f := &flight{kind: opStop, done: make(chan struct{})}
	rec.flight = f
	m.view.mu.Unlock()

	removed := false
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := m.rt.Inspect(rctx, id)
	switch {
	case errdefs.IsNotFound(err):
		removed = true
	case err != nil:
		m.log.Warn("reaping a half-made container", "container_id", short(id), "err", err)
	case c.State != backend.Created:
		// Started after all: keep it, and let the view catch up.
	default:
		if err := m.rt.Remove(rctx, id, 0); err != nil {
			m.log.Warn("reaping a half-made container", "container_id", short(id), "err", err)
		} else {
			removed = true
			m.log.Info("reaped a container that was created but never started", "user", bound(k.user), "server", bound(k.server), "container_id", short(id))
			m.metrics.reaped.Inc()
		}
	}

	m.view.mu.Lock()
	rec.end()
	if err == nil && !removed {
		m.observeLocked(rec, c)
	}
	if removed && rec.containerID == id {
		m.forgetLocked(k, rec)
	}
	f.land(rec.srv, nil)
	m.view.mu.Unlock()
	return removed
}
