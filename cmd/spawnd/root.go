package main

import (
	"github.com/spf13/cobra"

	"github.com/spawnd/spawnd/daemon"
)

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "spawnd",
		Short: "One identical Jupyter environment for the whole team",
		Long: `spawnd runs one container per JupyterHub user and named server on a Docker
engine, with each user's home bind-mounted from the host, and reports which
env each server runs.

  spawnd serve               run the daemon (the API JupyterHub's SpawndSpawner calls)
  spawnd ps                  list servers
  spawnd envs                who runs which lock of each env
  spawnd logs USER[/SERVER]  why did it die (secrets redacted)
  spawnd stop USER[/SERVER]  stop a server (its home stays)
  spawnd rollout ENV         move idle servers onto the env's current lock

Client commands find the daemon with --addr (SPAWND_ADDR) and the token with
--token-file (SPAWND_TOKEN_FILE) or SPAWND_TOKEN; given neither, they read
both from the daemon's config (--config, default /etc/spawnd/spawnd.yaml).`,
		Version:       daemon.Build().String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServe(), newPs(), newEnvs(), newRollout(), newLogs(), newHealth(), newStop(), newStatus(), newHome(), newLock(), newBuild(), newBundle(), newVerify(), newImage(), newDoctor(), newInstallSystemd())
	return root
}
