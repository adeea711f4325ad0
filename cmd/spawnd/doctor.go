package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/spawnd/spawnd/daemon"
	"github.com/spawnd/spawnd/doctor"
	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/spawnd/backends"
)

func newDoctor() *cobra.Command {
	var configPath, hubURL, frontURL, frontCA, hubConfig, hubEnv, unit string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check the installation and say how to fix each problem",
		Long: `Check what spawnd depends on: the config, the API token, the Docker engine
(reachable, API version, runc against known container-escape advisories,
live-restore), homes_root (exists, owned by root, not writable by others,
free space, writable in spawnd's systemd sandbox: --unit), who owns the
homes (a warning when their uid is a login account of this host, which
could then read every user's files), GPUs (a profile
that asks for them on an engine without the NVIDIA runtime), the user
network (inter-container traffic on is a warning), each env (lock present
and current, image present and built from that lock), the hub's login
(--hub-config and --hub-env are read for a login that lets strangers in: a dummy login without a password, on every
address or behind an HTTPS front, GitHub without allowed organisations or users, native without the admin's password), and the hub (with
--hub-url: it answers, its JupyterHub shares each env's locked jupyterhub's
major version, and it refuses a made-up user and password), and the front
door (with --front-url: the HTTPS address people use, through Caddy or
another proxy; its certificate must verify, against the system's roots
and --front-ca, and it too must refuse the made-up login). It changes
nothing, unless the hub lets the made-up user in (doctor then names that user).
Exits 1 when any check fails; warnings do not fail.`,
		Example: "  spawnd doctor --config /etc/spawnd/spawnd.yaml --hub-url http://127.0.0.1:8000\n" +
			"  spawnd doctor --hub-url http://127.0.0.1:8000 --front-url https://hub.example.org/",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			in := doctor.Input{Build: daemon.Build().String(), HubURL: hubURL, FrontURL: frontURL, FrontCA: frontCA, Unit: unit, HubConfig: doctor.HubConfig{
				Path: hubConfig, EnvPath: hubEnv, Explicit: cmd.Flags().Changed("hub-config"),
			}}
			cfg, _, err := decodeConfig(configPath, cmd.Flags())
			if err != nil {
				in.ConfigErr = err
			} else {
				verr := cfg.Validate()
				in.ConfigErr = verr
				in.Config, in.Token, in.TokenFile = &cfg.Config, cfg.Token, cfg.TokenFile
				if in.Token == "" && cfg.TokenFile != "" {
					if b, err := os.ReadFile(cfg.TokenFile); err == nil {
						in.Token = strings.TrimSpace(string(b))
					}
				}
				if eng, _, err := backends.Local(cfg.Engine.Host); err != nil {
					in.EngineErr = err
				} else {
					defer eng.Close()
					in.Engine = eng
					in.ImagePlan = images.PlanVersion
					in.BootCost = func(ctx context.Context, image string, cmd []string) (string, bool, error) {
						c, err := images.BootCost(ctx, eng, image, cmd)
						return c.String(), c.Cold != "", err
					}
				}
			}
			results := doctor.Run(cmd.Context(), in)
			if asJSON {
				if err := writeJSONOut(cmd.OutOrStdout(), results); err != nil {
					return err
				}
			} else {
				printDoctor(cmd.OutOrStdout(), results)
			}
			if doctor.Failed(results) {
				return errSilentExit
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&configPath, "config", "c", "", "config file (default ./spawnd.yaml, then /etc/spawnd/spawnd.yaml)")
	f.StringVar(&hubURL, "hub-url", "", "the hub's URL to check, e.g. http://127.0.0.1:8000")
	f.StringVar(&frontURL, "front-url", "", "the hub's HTTPS address as people reach it (Caddy in front), e.g. https://hub.example.org/")
	f.StringVar(&frontCA, "front-ca", "", "a CA certificate (PEM) to trust for --front-url besides the system's, e.g. Caddy's own root.crt")
	f.StringVar(&hubConfig, "hub-config", "/etc/jupyterhub/jupyterhub_config.py", "the hub's config to read (skipped when the default is absent)")
	f.StringVar(&hubEnv, "hub-env", "/etc/jupyterhub/environment", "the hub's environment file (the shipped config reads SPAWND_HUB_AUTH and the rest from it)")
	f.StringVar(&unit, "unit", "", "spawnd's systemd unit, for the sandbox check (default "+strings.Join(doctor.Units, ", else ")+"; skipped when absent)")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printDoctor(w io.Writer, rs []doctor.Result) {
	marks := map[doctor.Status]string{doctor.OK: "[ ok ]", doctor.Warn: "[warn]", doctor.Fail: "[FAIL]", doctor.Skip: "[skip]"}
	fails := 0
	for _, r := range rs {
		fmt.Fprintf(w, "%s %-14s %s\n", marks[r.Status], r.Check, r.Detail)
		if r.Fix != "" && (r.Status == doctor.Fail || r.Status == doctor.Warn) {
			fmt.Fprintf(w, "       %-14s fix: %s\n", "", r.Fix)
		}
		if r.Status == doctor.Fail {
			fails++
		}
	}
	if fails > 0 {
		fmt.Fprintf(w, "\n%d check(s) failed.\n", fails)
	} else {
		fmt.Fprintln(w, "\nAll checks passed.")
	}
}
