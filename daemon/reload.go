package daemon

import (
	"fmt"
	"net"
	"os"
	"reflect"
	"strings"
	"time"
)

// Reload re-reads the config with load (systemctl reload: SIGHUP) and puts
// its envs, profiles, teams and defaults in place for the starts that
// follow; running servers are not touched. A config that does not load, or
// changes a key only a restart can (listen, tokens, tls, engine, hub,
// logging, homes_root, network, timeouts), changes nothing: the error is
// logged and returned, and the running config keeps serving. systemd hears
// RELOADING=1, then READY=1, either way.
func (d *Daemon) Reload(load func() (Config, error)) error {
	_ = sdNotify("RELOADING=1")
	defer func() { _ = sdNotify("READY=1") }()
	began := time.Now()
	cfg, err := load()
	if err == nil {
		if keys := restartKeys(d.cfg, cfg); len(keys) > 0 {
			err = fmt.Errorf("%s changed, which takes a restart (systemctl restart spawnd; servers keep running); nothing was reloaded", strings.Join(keys, ", "))
		}
	}
	if err == nil {
		err = d.manager.Reload(cfg.Config)
	}
	if err != nil {
		d.log.Error("reload refused; the running config keeps serving", "err", err)
		return err
	}
	d.cfg.Config = cfg.Config
	d.log.Info("reload done", "elapsed", time.Since(began).Round(time.Millisecond))
	return nil
}

// restartKeys names the daemon's own keys (not spawnd.Config's, which the
// core checks) whose values differ between old and now.
func restartKeys(old, now Config) []string {
	var keys []string
	a, b := reflect.ValueOf(old), reflect.ValueOf(now)
	t := a.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Anonymous || !f.IsExported() {
			continue // the embedded spawnd.Config
		}
		if !reflect.DeepEqual(a.Field(i).Interface(), b.Field(i).Interface()) {
			name, _, _ := strings.Cut(f.Tag.Get("mapstructure"), ",")
			keys = append(keys, name)
		}
	}
	return keys
}

// sdNotify tells systemd (Type=notify) the daemon's state, when it runs
// under systemd; elsewhere it does nothing.
func sdNotify(state string) error {
	sock := os.Getenv("NOTIFY_SOCKET")
	if sock == "" {
		return nil
	}
	if strings.HasPrefix(sock, "@") {
		sock = "\x00" + sock[1:] // an abstract socket
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("reaching systemd's notify socket: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("telling systemd %q: %w", state, err)
	}
	return nil
}
