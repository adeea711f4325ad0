package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/spf13/cobra"

	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/spawnd/backends"
	"github.com/spawnd/spawnd/spawnd/docker"
)

type buildFlags struct {
	network string
	asJSON  bool
	engine  string
	caCerts []string
	cache   string
}

func (b *buildFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&b.network, "network", "", `network of the containers that lock and fetch packages ("host" to reach a package index on 127.0.0.1); builds themselves always run with no network`)
	cmd.Flags().StringVar(&b.cache, "cache-dir", "", "package cache: every .deb and wheel a lock names, by SHA-256 (default: $SPAWND_CACHE_DIR, or ~/.cache/spawnd/packages)")
	cmd.Flags().BoolVar(&b.asJSON, "json", false, "progress as JSON lines")
	cmd.Flags().StringVar(&b.engine, "engine", "", "Docker engine address (default: DOCKER_HOST or the local socket)")
	cmd.Flags().StringArrayVar(&b.caCerts, "ca-cert", nil, `extra CA certificate (PEM file) that pip, py-rattler and downloads trust while locking and fetching, e.g. a company proxy's; repeatable (default: $SPAWND_BUILD_CA_CERTS, files separated by ":")`)
}

// options are the images.Options the flags ask for.
func (b *buildFlags) options(cmd *cobra.Command) (images.Options, error) {
	files := b.caCerts
	if len(files) == 0 {
		files = images.CAFilesFromEnv()
	}
	pem, err := images.ReadCACerts(files)
	if err != nil {
		return images.Options{}, fmt.Errorf("--ca-cert: %w", err)
	}
	return images.Options{Network: b.network, CACerts: pem, CacheDir: b.cache, Progress: progressSink(cmd.ErrOrStderr(), b.asJSON)}, nil
}

func (b *buildFlags) connect(ctx context.Context) (*docker.Engine, error) {
	eng, _, err := backends.Local(b.engine)
	if err != nil {
		return nil, err
	}
	if err := eng.Ping(ctx); err != nil {
		eng.Close()
		return nil, fmt.Errorf("the Docker engine does not answer (%v); start it (scripts/engine-up, or systemctl start docker)", err)
	}
	return eng, nil
}

// open is how the spec commands begin: the spec's path (checked to load),
// the options the flags ask for, and a connected engine (the caller closes it).
func (b *buildFlags) open(cmd *cobra.Command, arg string) (string, images.Options, *docker.Engine, error) {
	path, err := specPath(arg)
	if err != nil {
		return "", images.Options{}, nil, err
	}
	if _, err := envs.Load(path); err != nil {
		return "", images.Options{}, nil, err
	}
	opts, err := b.options(cmd)
	if err != nil {
		return "", images.Options{}, nil, err
	}
	eng, err := b.connect(cmd.Context())
	if err != nil {
		return "", images.Options{}, nil, err
	}
	return path, opts, eng, nil
}

// specPath accepts a spec file or an env name (envs/<name>.yaml).
func specPath(arg string) (string, error) {
	if _, err := os.Stat(arg); err == nil {
		return arg, nil
	}
	p := filepath.Join("envs", arg+".yaml")
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s: no such spec file (nor %s)", arg, p)
}

func newLock() *cobra.Command {
	var bf buildFlags
	cmd := &cobra.Command{
		Use:   "lock SPEC",
		Short: "Resolve an env spec into a lock file (exact versions and hashes)",
		Long: `Lock an env spec with the real package tools, in containers of its base:
apt-get for Debian packages, pip's installation report for pip packages.
Writes SPEC's lock next to it (envs/team.yaml -> envs/team.lock.json):
indented, sorted JSON with the spec's checksum, the base image digest, and
every package (dependencies included) pinned by version and SHA-256.`,
		Example: "  spawnd lock envs/team.yaml",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, opts, eng, err := bf.open(cmd, args[0])
			if err != nil {
				return err
			}
			defer eng.Close()
			s, err := envs.Load(path)
			if err != nil {
				return err
			}
			l, err := images.Lock(cmd.Context(), eng, s, opts)
			if err != nil {
				return err
			}
			if err := envs.WriteLock(envs.LockPath(path), l); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", envs.LockPath(path), l.Digest)
			return nil
		},
	}
	bf.register(cmd)
	return cmd
}

func newBuild() *cobra.Command {
	var bf buildFlags
	var relock bool
	var fromBundle string
	cmd := &cobra.Command{
		Use:   "build SPEC",
		Short: "Build the pinned image of an env spec (locking first if there is no lock)",
		Long: `Build the image of an env from its lock. The image tag follows from the lock
(spawnd/<env>:<12 hex digits of the lock digest>), so the same lock gives the
same tag everywhere, and an unchanged lock whose image exists builds nothing.

Without a lock, build locks first. A lock made from an older version of the
spec is refused unless --relock is given; a lock edited by hand is always
refused. A failed build leaves the previous lock and image in place.

Every .deb and wheel the lock names is fetched first into the package cache
(--cache-dir) and checked against the lock's SHA-256; the build itself runs
with no network and installs only those files. With --from-bundle, the
packages and the base image come from a bundle (spawnd bundle) and nothing
is fetched: the lock rebuilds to the same image after its mirror and index
have moved on.

Layers run base -> apt -> conda -> pip -> kernels -> user, so a pip change
reuses the apt layer.

After the build, the env's boot cost goes to stderr: the CPU seconds its
server spends importing itself and its extensions on every start, and the
five packages that cost most (spawnd doctor reports it too). Every student
pays it at every start; a warm pool pays it before they come (docs/POOLS.md).`,
		Example: `  spawnd build envs/team.yaml
  spawnd build team --relock
  spawnd build envs/team.yaml --from-bundle /srv/bundles/team-1a2b3c4d5e6f
  spawnd build envs/examples/pip.yaml --network host --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, opts, eng, err := bf.open(cmd, args[0])
			if err != nil {
				return err
			}
			defer eng.Close()
			opts.Relock = relock
			var res images.Result
			if fromBundle != "" {
				if relock {
					return errors.New("--relock and --from-bundle do not go together: a bundle rebuilds exactly its own lock")
				}
				opts.Registry = []remote.Option{remote.WithAuthFromKeychain(authn.DefaultKeychain)}
				res, err = images.BuildFromBundle(cmd.Context(), eng, path, fromBundle, opts)
			} else {
				res, err = images.Build(cmd.Context(), eng, path, opts)
			}
			if err != nil {
				if errors.Is(err, context.Canceled) {
					return errors.New("interrupted; the previous lock and image are unchanged")
				}
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", res.Tag, res.ImageID)
			if res.Lock != nil && !bf.asJSON {
				// What the env's authors should see: every student pays it on every start.
				if c, err := images.BootCost(cmd.Context(), eng, res.Tag, res.Lock.Cmd); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "boot cost: not measured: %v\n", err)
				} else {
					fmt.Fprintf(cmd.ErrOrStderr(), "boot cost: %s\n", c)
				}
			}
			return nil
		},
	}
	bf.register(cmd)
	cmd.Flags().BoolVar(&relock, "relock", false, "make a new lock even if one exists (the new lock is written only if the build succeeds)")
	cmd.Flags().StringVar(&fromBundle, "from-bundle", "", "build from a bundle (spawnd bundle): a directory, or a registry reference; the lock's packages and base come from it and nothing is fetched")
	return cmd
}

func newBundle() *cobra.Command {
	var bf buildFlags
	var push string
	cmd := &cobra.Command{
		Use:   "bundle SPEC [DIR]",
		Short: "Store everything a lock needs to rebuild offline: its base image, every .deb and wheel",
		Long: `Write the bundle of SPEC's lock to DIR, a new OCI image layout: the lock's
base image, and an artifact (` + images.BundleArtifactType + `) holding the lock
and every .deb and wheel it names, each blob named by the SHA-256 the lock
pins. Copy DIR anywhere and rebuild the same image there, with no network,
by spawnd build SPEC --from-bundle DIR.

With --push REGISTRY/REPOSITORY[:TAG] instead of DIR, the base image goes to
the repository by its digest and the artifact under the tag (default
ENV-<12 hex of the lock digest>); it prints the artifact's reference by
digest, which --from-bundle takes as well. Credentials come from the Docker
config (~/.docker/config.json), as docker login leaves them.

The env must have been built on this machine first (spawnd build SPEC):
bundling takes the base image from the engine and the packages from the
package cache, and fetches nothing.`,
		Example: `  spawnd bundle envs/team.yaml /srv/bundles/team-$(date +%F)
  spawnd bundle envs/team.yaml --push registry.example.edu/spawnd/bundles`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (len(args) == 2) == (push != "") {
				return errors.New("give a directory to write the bundle to, or --push REGISTRY/REPOSITORY[:TAG]; one of the two")
			}
			path, opts, eng, err := bf.open(cmd, args[0])
			if err != nil {
				return err
			}
			defer eng.Close()
			l, err := images.CurrentLock(path)
			if err != nil {
				return err
			}
			cache := opts.PackageCache()
			if push != "" {
				ref, err := images.PushBundle(cmd.Context(), eng, l, cache, push, remote.WithAuthFromKeychain(authn.DefaultKeychain))
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s (%d package files)\n", ref, l.Digest, len(images.Files(l)))
				return nil
			}
			if err := images.WriteBundle(cmd.Context(), eng, l, cache, args[1]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s (%d package files)\n", args[1], l.Digest, len(images.Files(l)))
			return nil
		},
	}
	bf.register(cmd)
	cmd.Flags().StringVar(&push, "push", "", "push the bundle to a registry (REGISTRY/REPOSITORY[:TAG]) instead of writing a directory")
	return cmd
}
