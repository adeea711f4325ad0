package spawnd

import (
	"context"
	"time"

	"github.com/spawnd/spawnd/spawnd/backend"
)

// Stop removes the server's container (SIGTERM, then SIGKILL after
// stop_grace) and forgets the server. It never touches the home.
func (m *Manager) Stop(ctx context.Context, user, server string) (Server, error) {
	k, err := m.lookup(user, server)
	if err != nil {
		return Server{}, err
	}
	for {
		m.view.mu.Lock()
		rec := m.view.servers[k]
		if rec == nil {
			m.view.mu.Unlock()
			return Server{}, errNoServer
		}
		if f := rec.flight; f != nil {
			m.view.mu.Unlock()
			srv, err := f.wait(ctx)
			if f.kind == opStop {
				return srv, err
			}
			if ctx.Err() != nil {
				return Server{}, ctx.Err()
			}
			continue
		}
		f := rec.begin(opStop)
		id := rec.containerID
		m.view.mu.Unlock()

		var err error
		if id != "" {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.StopGrace+30*time.Second)
			err = m.rt.Remove(rctx, id, m.cfg.StopGrace)
			cancel()
		}
		m.view.mu.Lock()
		rec.end()
		srv := rec.srv
		if err != nil {
			err = m.engineErr("removing the container", err)
			m.log.Error("stop failed", "user", bound(user), "server", bound(server), "err", err)
		} else {
			delete(m.view.servers, k)
			if m.slots != nil {
				m.slots.wake()
			}
			srv.State, srv.Ready, srv.Reason = StateStopped, false, "stopped"
			m.metrics.stops.Inc()
			m.log.Info("server stopped", "user", bound(user), "server", bound(server))
		}
		f.land(srv, err)
		m.view.mu.Unlock()
		return srv, err
	}
}

// DeleteHome deletes a user's home: the explicit admin action, and the only
// way a home is ever deleted. It is refused while any server of the user
// exists.
func (m *Manager) DeleteHome(ctx context.Context, user string) error {
	spec, done, err := m.holdHome(user, "deleted")
	if err != nil {
		return err
	}
	defer done()
	if err := m.homes.Delete(ctx, spec); err != nil {
		return adminStoreErr(err)
	}
	m.log.Warn("home deleted by admin request", "user", bound(user))
	return nil
}

// MigrateHome gives a home made under home_owner env (owned by the env's
// user) to its person, as home_owner system or range has it: the explicit
// admin action, never done by a start. It is refused while any server of
// the user exists.
func (m *Manager) MigrateHome(ctx context.Context, user string) (HomeMigration, error) {
	if m.owned == nil {
		if _, err := m.lookup(user, ""); err != nil {
			return HomeMigration{}, err
		}
		return HomeMigration{}, errorf(ErrConflict, "home_owner is env: every home belongs to the env's user, so there is nothing to migrate to; set home_owner: system or range first")
	}
	spec, done, err := m.holdHome(user, "migrated")
	if err != nil {
		return HomeMigration{}, err
	}
	defer done()
	mg, err := m.owned.migrate(spec)
	if err != nil {
		return HomeMigration{}, adminStoreErr(err)
	}
	if mg.Migrated {
		m.log.Warn("home migrated by admin request", "user", bound(user), "from_uid", mg.FromUID, "to_uid", mg.ToUID, "files", mg.Files)
	}
	return mg, nil
}

// MoveHome moves a user's node-pinned home to another node (the explicit
// admin action; the next start runs there). It is refused while any server
// of the user exists, and when homes are not node-pinned.
func (m *Manager) MoveHome(ctx context.Context, user, node string) (backend.HomeMove, error) {
	if !m.pinned {
		if _, err := m.lookup(user, ""); err != nil {
			return backend.HomeMove{}, err
		}
		return backend.HomeMove{}, errNotPinned
	}
	spec, done, err := m.holdHome(user, "moved")
	if err != nil {
		return backend.HomeMove{}, err
	}
	defer done()
	mv, err := m.homes.Move(ctx, spec, node)
	if err != nil {
		return backend.HomeMove{}, adminStoreErr(err)
	}
	m.log.Warn("home moved by admin request", "user", bound(user), "from", mv.From, "to", mv.To, "bytes", mv.Bytes, "sha256", mv.SHA256, "old_copy", mv.OldCopy)
	return mv, nil
}

// holdHome marks user's home busy ("deleted", "moved") for an admin action,
// refusing while any server of the user exists or another action holds it.
// The spec names the default env's image, which the node-pinned store's
// helpers run. done releases the home.
func (m *Manager) holdHome(user, doing string) (spec backend.HomeSpec, done func(), err error) {
	if _, err := m.lookup(user, ""); err != nil {
		return spec, nil, err
	}
	m.view.mu.Lock()
	defer m.view.mu.Unlock()
	for k, rec := range m.view.servers {
		if k.user == user && (rec.containerID != "" || rec.flight != nil) {
			name := k.server
			if name == "" {
				name = "the default server"
			}
			return spec, nil, errorf(ErrConflict, "the user has a server (%s, %s); stop it before the home is %s", bound(name), rec.srv.State, doing)
		}
	}
	if busy := m.view.homeBusy[user]; busy != "" {
		return spec, nil, errorf(ErrConflict, "the home is already being %s", busy)
	}
	m.view.homeBusy[user] = doing
	spec = backend.HomeSpec{User: user, Dir: Escape(user), Labels: m.selector()}
	if env, ok := m.envs.current()[m.config().DefaultEnv]; ok {
		spec.Image, spec.UID, spec.GID = env.Image, env.User.UID, env.User.GID
	}
	return spec, func() {
		m.view.mu.Lock()
		delete(m.view.homeBusy, user)
		m.view.mu.Unlock()
	}, nil
}
