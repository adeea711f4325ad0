package spawnd

import (
	"context"
	"time"
)

// Stop removes the server's container (SIGTERM, then SIGKILL after
// stop_grace) and forgets the server. It never touches the home.
func (m *Manager) Stop(ctx context.Context, user, server string) (Server, error) {
	k, err := m.lookup(user, server)
	if err != nil {
		return Server{}, err
	}
	for {
		m.mu.Lock()
		rec := m.servers[k]
		if rec == nil {
			m.mu.Unlock()
			return Server{}, errNoServer
		}
		if f := rec.flight; f != nil {
			m.mu.Unlock()
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
		m.mu.Unlock()

		var err error
		if id != "" {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.StopGrace+30*time.Second)
			err = m.rt.Remove(rctx, id, m.cfg.StopGrace)
			cancel()
		}
		m.mu.Lock()
		rec.end()
		srv := rec.srv
		if err != nil {
			err = m.engineErr("removing the container", err)
			m.log.Error("stop failed", "user", bound(user), "server", bound(server), "err", err)
		} else {
			delete(m.servers, k)
			srv.State, srv.Ready, srv.Reason = StateStopped, false, "stopped"
			m.metrics.stops.Inc()
			m.log.Info("server stopped", "user", bound(user), "server", bound(server))
		}
		f.land(srv, err)
		m.mu.Unlock()
		return srv, err
	}
}

// DeleteHome deletes a user's home: the explicit admin action, and the only
// way a home is ever deleted. It is refused while any server of the user
// exists.
func (m *Manager) DeleteHome(ctx context.Context, user string) error {
	if _, err := m.lookup(user, ""); err != nil {
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
			return errorf(ErrConflict, "the user has a server (%s, %s); stop it before deleting the home", bound(name), rec.srv.State)
		}
	}
	if m.deleting[user] {
		m.mu.Unlock()
		return errorf(ErrConflict, "the home is already being deleted")
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
