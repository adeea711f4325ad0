package main

import (
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/spawnd/spawnd/daemon"
)

func newServe() *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the daemon: the API that JupyterHub's SpawndSpawner calls",
		Long: `Run the spawnd daemon. It adopts the user containers it finds on the engine
(they keep running while the daemon is down), follows the engine's events,
and serves the API on 127.0.0.1:8765 by default (or a unix socket, or TLS).

Configuration comes from spawnd.yaml (--config, else ./spawnd.yaml or
/etc/spawnd/spawnd.yaml), then SPAWND_* variables (SPAWND_HOMES_ROOT,
SPAWND_LISTEN, SPAWND_TOKEN, ...), then flags. Unknown keys are errors.
See docs/CONFIG.md.

SIGHUP (systemctl reload spawnd) re-reads the config and puts its envs,
profiles, teams and defaults in place for the starts that follow; running
servers are untouched. A config that does not load, or that changes a key
only a restart can, changes nothing and is logged. Under systemd
(Type=notify) spawnd says READY=1 once it has synced with the engine and
serves.`,
		Example: `  openssl rand -hex 32 > /etc/spawnd/token
  spawnd serve --config /etc/spawnd/spawnd.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(configPath, cmd.Flags())
			if err != nil {
				return err
			}
			d, err := daemon.New(cfg, nil)
			if err != nil {
				return err
			}
			defer d.Close()
			// systemctl reload (SIGHUP) re-reads envs, profiles and teams.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			go func() {
				for range hup {
					_ = d.Reload(func() (daemon.Config, error) { return loadConfig(configPath, cmd.Flags()) })
				}
			}()
			return d.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVarP(&configPath, "config", "c", "", "config file (default ./spawnd.yaml, then /etc/spawnd/spawnd.yaml)")
	f.String("listen", "", "API address: host:port or unix:///path.sock (config: listen)")
	bindFlag(f, "listen", "listen")
	f.String("homes-root", "", "host directory that holds users' homes (config: homes_root)")
	bindFlag(f, "homes-root", "homes_root")
	f.String("token-file", "", "file with the API token (config: token_file)")
	bindFlag(f, "token-file", "token_file")
	f.String("log-level", "", "debug, info, warn or error (config: log_level)")
	bindFlag(f, "log-level", "log_level")
	return cmd
}
