package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/spf13/cobra"

	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/backends"
)

// lockedTag finds the image tag of an env from its lock.
func lockedTag(arg string) (*envs.Lock, error) {
	path, err := specPath(arg)
	if err != nil {
		return nil, err
	}
	l, err := envs.ReadLock(envs.LockPath(path))
	if err != nil {
		return nil, fmt.Errorf("reading the lock of %s: %w (run spawnd build %s first)", path, err, path)
	}
	return l, nil
}

func newImage() *cobra.Command {
	img := &cobra.Command{Use: "image", Short: "Move env images: push to a registry, save to and load from OCI archives; import a base"}
	var bf buildFlags

	push := &cobra.Command{
		Use:   "push ENV REGISTRY",
		Short: "Push an env's image to a registry; prints the reference by digest",
		Long: `Push the image of ENV (a spec file or an env name) to REGISTRY as
REGISTRY/spawnd/<env>:<lock digest>, and print the reference by digest that
other machines (and Swarm services) should pull. Credentials come from the
Docker keychain (docker login as the same user: ~/.docker/config.json and
its credential helpers).`,
		Example: "  spawnd image push team registry.example.edu:5000",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lockedTag(args[0])
			if err != nil {
				return err
			}
			eng, err := bf.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer eng.Close()
			dst := strings.TrimRight(args[1], "/") + "/spawnd/" + l.Env + ":" + l.ShortDigest()
			// The daemon user's registry credentials, as docker push uses them.
			ref, err := images.Push(cmd.Context(), eng, l.Tag(), dst, remote.WithAuthFromKeychain(authn.DefaultKeychain))
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), ref)
			return nil
		},
	}
	save := &cobra.Command{
		Use:     "save ENV FILE",
		Short:   "Save an env's image to an OCI archive (for sites without registry access)",
		Example: "  spawnd image save team team.oci.tar",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lockedTag(args[0])
			if err != nil {
				return err
			}
			eng, err := bf.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer eng.Close()
			d, err := images.SaveOCI(cmd.Context(), eng, l.Tag(), args[1])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s@%s\n", args[1], l.Tag(), d)
			return nil
		},
	}
	load := &cobra.Command{
		Use:     "load FILE",
		Short:   "Load the images of an OCI archive made by spawnd image save",
		Example: "  spawnd image load team.oci.tar",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			eng, err := bf.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer eng.Close()
			tags, err := images.LoadOCI(cmd.Context(), eng, args[0])
			if err != nil {
				return err
			}
			for _, t := range tags {
				fmt.Fprintln(cmd.OutOrStdout(), t)
			}
			return nil
		},
	}
	var ri images.RootfsImage
	var created int64
	importRootfs := &cobra.Command{
		Use:   "import-rootfs FILE TAG",
		Short: "Make a base image from a root file system tarball, reproducibly",
		Long: `Make a one-layer image of a root file system (an uncompressed tar, e.g. from
mmdebstrap) and store it as TAG. Unlike docker import, the image holds no
time but --created (default: $SOURCE_DATE_EPOCH, else 0), so the same tarball
gives the same image ID on every machine. scripts/make-base uses it.`,
		Example: `  spawnd image import-rootfs rootfs.tar spawnd/debian:bookworm --env PATH=/usr/bin:/bin --cmd /bin/bash`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("created") {
				if v := os.Getenv("SOURCE_DATE_EPOCH"); v != "" {
					n, err := strconv.ParseInt(v, 10, 64)
					if err != nil {
						return fmt.Errorf("SOURCE_DATE_EPOCH: %q is not a number of seconds", v)
					}
					created = n
				}
			}
			ri.File, ri.Created = args[0], time.Unix(created, 0)
			eng, err := bf.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer eng.Close()
			id, err := images.ImportRootfs(cmd.Context(), eng, args[1], ri)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", args[1], id)
			return nil
		},
	}
	importRootfs.Flags().Int64Var(&created, "created", 0, "the image's time, in seconds since 1970 (default: $SOURCE_DATE_EPOCH, else 0)")
	importRootfs.Flags().StringArrayVar(&ri.Env, "env", nil, "KEY=VALUE in the image's environment; repeatable")
	importRootfs.Flags().StringArrayVar(&ri.Cmd, "cmd", nil, "the image's command, one argument per flag")
	importRootfs.Flags().StringVar(&ri.Comment, "comment", "", "a comment for the image's history")
	var pp struct {
		registry string
		insecure bool
		timeout  time.Duration
	}
	prepull := &cobra.Command{
		Use:   "prepull ENV",
		Short: "Pull an env's image onto every node of a swarm, so no start waits for a pull",
		Long: `Put the image of ENV (a spec file or an env name) on every active node of the
swarm whose manager --engine names: a global job of the image, one task per
node, each pulling the image by digest from --registry (where
spawnd image push put it) and exiting at once; the job is removed at the end.
Each node's progress is printed; the exit status is non-zero if any node
failed, naming it and why.`,
		Example: "  spawnd image prepull team --engine unix:///var/run/docker.sock --registry registry.example.edu:5000",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lockedTag(args[0])
			if err != nil {
				return err
			}
			if pp.registry == "" {
				return errors.New("--registry: name the registry the nodes pull from (engine.registry in spawnd.yaml)")
			}
			sw, err := backends.Open(backends.EngineConfig{Backend: "swarm", Host: bf.engine, Registry: pp.registry, InsecureRegistry: pp.insecure}, 0)
			if err != nil {
				return err
			}
			defer sw.Close()
			if sw.Prepull == nil {
				return fmt.Errorf("the %s backend cannot prepull images", sw.Name)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), pp.timeout)
			defer cancel()
			began := time.Now()
			ref, err := sw.Prepull.Prepull(ctx, l.Tag(), map[string]string{labels.Env: l.Env}, func(ev backend.PrepullEvent) {
				line := fmt.Sprintf("[%6.1fs] %-8s %s  (%d/%d nodes ready)", time.Since(began).Seconds(), ev.State, ev.Node, ev.Ready, ev.Nodes)
				if ev.Err != "" {
					line += ": " + ev.Err
				}
				fmt.Fprintln(cmd.ErrOrStderr(), line)
			})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), ref)
			return nil
		},
	}
	prepull.Flags().StringVar(&pp.registry, "registry", "", "the registry every node pulls from, host[:port] (engine.registry)")
	prepull.Flags().BoolVar(&pp.insecure, "insecure-registry", false, "reach the registry over plain HTTP (engine.insecure_registry)")
	prepull.Flags().DurationVar(&pp.timeout, "timeout", 30*time.Minute, "give up after this long")
	prune := newImagePrune(&bf)
	for _, c := range []*cobra.Command{push, save, load, importRootfs, prepull, prune} {
		what := "Docker engine address"
		if c == prepull {
			what = "a swarm manager's engine address"
		}
		c.Flags().StringVar(&bf.engine, "engine", "", what+" (default: DOCKER_HOST or the local socket)")
		img.AddCommand(c)
	}
	return img
}

func newImagePrune(bf *buildFlags) *cobra.Command {
	var configPath string
	var keep int
	var dryRun bool
	var only []string
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Remove env images nothing needs (keeps the last N locks of each env, the current ones, and any in use)",
		Long: `Remove the env images spawnd made that nothing needs any more. An env image
stays when a container (running or stopped) uses it, when it is its env's
current lock (read from the daemon's config: --config), or when it is among
the last --keep locks of its env (by the lock's time); the rest go, with the
lock stage images and untagged leftovers of builds. Removals are never
forced: an image the engine says is in use stays. Refused while a build runs
on this machine. A pruned lock can come back: spawnd envs rollback rebuilds
its image from the lock.`,
		Example: "  spawnd image prune --dry-run\n  spawnd image prune --keep 2 --config /etc/spawnd/spawnd.yaml",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if keep < 1 {
				return fmt.Errorf("--keep: %d; keep at least the newest lock of each env", keep)
			}
			cfg, where, err := decodeConfig(configPath, nil)
			if err != nil {
				return err
			}
			if where == "" {
				return errors.New("no daemon config found (./spawnd.yaml, /etc/spawnd/spawnd.yaml): prune needs it to know each env's current lock; give --config")
			}
			current := map[string]string{}
			for name, e := range cfg.Envs {
				switch {
				case e.Spec != "":
					l, err := envs.ReadLock(envs.LockPath(e.Spec))
					if err != nil {
						return fmt.Errorf("env %s: reading its current lock: %w", name, err)
					}
					current[l.Env] = l.Digest
				case e.LockDigest != "":
					current[name] = e.LockDigest
				}
			}
			eng, err := bf.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer eng.Close()
			res, err := images.Prune(cmd.Context(), eng, images.PruneOptions{Keep: keep, Current: current, DryRun: dryRun, Envs: only})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			verb := "removed"
			if dryRun {
				verb = "would remove"
			}
			for _, p := range res.Removed {
				fmt.Fprintf(out, "%s %s (%.0f MiB): %s\n", verb, p.Ref, float64(p.Size)/(1<<20), p.Why)
			}
			for _, p := range res.Kept {
				fmt.Fprintf(out, "kept %s: %s\n", p.Ref, p.Why)
			}
			fmt.Fprintf(out, "%s %d images, %.0f MiB; kept %d\n", verb, len(res.Removed), float64(res.Freed)/(1<<20), len(res.Kept))
			return nil
		},
	}
	cmd.Flags().StringVarP(&configPath, "config", "c", "", "the daemon's config, for each env's current lock (default ./spawnd.yaml, then /etc/spawnd/spawnd.yaml)")
	cmd.Flags().IntVar(&keep, "keep", 3, "how many locks of each env keep their image, newest first")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "say what would go, remove nothing")
	cmd.Flags().StringSliceVar(&only, "env", nil, "prune only these envs' images (repeatable; default all)")
	return cmd
}
