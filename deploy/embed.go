// Package deploy holds the files that put spawnd in place on a host: the
// systemd units, the example spawnd.yaml and the JupyterHub configuration.
// They are embedded so `spawnd install-systemd` needs nothing but the binary.
package deploy

import "embed"

// Files are the deployment files, by their path under deploy/.
//
//go:embed systemd/spawnd.service systemd/jupyterhub.service spawnd.yaml jupyterhub_config.py
var Files embed.FS
