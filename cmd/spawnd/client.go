package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/daemon"
)

// clientFlags are the flags every client command shares.
type clientFlags struct {
	addr      string
	tokenFile string
	config    string
	cmd       *cobra.Command
}

// defaultDaemonConfig is where client commands look for the daemon's
// address and token when no flag or variable gives them.
const defaultDaemonConfig = "/etc/spawnd/spawnd.yaml"

// daemonConfigPath is defaultDaemonConfig; tests point it elsewhere, so
// what they check never depends on the machine's own /etc.
var daemonConfigPath = defaultDaemonConfig

func (c *clientFlags) register(cmd *cobra.Command) {
	c.cmd = cmd
	cmd.Flags().StringVar(&c.addr, "addr", "127.0.0.1:8765", "daemon address: host:port, http(s)://host:port or unix:///path.sock (env SPAWND_ADDR; default: the daemon config's listen)")
	cmd.Flags().StringVar(&c.tokenFile, "token-file", "", "file with the API token (env SPAWND_TOKEN_FILE; or SPAWND_TOKEN; default: the daemon config's token_file)")
	cmd.Flags().StringVar(&c.config, "config", "", "the daemon's config, read for its address and token when neither is given (default "+defaultDaemonConfig+" if it exists)")
}

func (c *clientFlags) client() (*api.Client, error) {
	addr, tok, err := c.settings()
	if err != nil {
		return nil, err
	}
	return api.NewClient(addr, tok)
}

// settings are the daemon's address and token: from the flags, then
// SPAWND_ADDR / SPAWND_TOKEN(_FILE), then the daemon's own config (listen,
// token_file), so that an admin on the daemon's host types no flags.
func (c *clientFlags) settings() (addr, token string, err error) {
	flagAddr := c.cmd != nil && c.cmd.Flags().Changed("addr")
	envAddr := os.Getenv("SPAWND_ADDR")
	explicitToken := c.tokenFile != "" || os.Getenv("SPAWND_TOKEN") != "" || os.Getenv("SPAWND_TOKEN_FILE") != ""
	path := c.config
	if path == "" && fileExists(daemonConfigPath) {
		path = daemonConfigPath
	}
	var cfg daemon.Config
	where := ""
	if path != "" && (!flagAddr && envAddr == "" || !explicitToken) {
		if cfg, where, err = decodeConfig(path, nil); err != nil {
			return "", "", err
		}
	}
	switch {
	case flagAddr:
		addr = c.addr
	case envAddr != "":
		addr = envAddr
	case where != "":
		addr = clientAddr(cfg.Listen, cfg.TLS.CertFile != "")
	default:
		addr = c.addr
	}
	if explicitToken || where == "" {
		token, err = clientToken(c.tokenFile)
		return addr, token, err
	}
	switch {
	case cfg.Token != "":
		token = cfg.Token
	case cfg.TokenFile != "":
		b, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			return "", "", fmt.Errorf("reading the API token %s (token_file in %s): %w; run as the daemon's user or root, or give --token-file", cfg.TokenFile, where, err)
		}
		token = strings.TrimSpace(string(b))
	default:
		return "", "", fmt.Errorf("%s names no token_file; give --token-file, or set SPAWND_TOKEN_FILE or SPAWND_TOKEN", where)
	}
	return addr, token, nil
}

// clientAddr is where a client on the daemon's host reaches a daemon that
// listens on listen: a wildcard address becomes the loopback one.
func clientAddr(listen string, tls bool) string {
	if listen == "" {
		listen = "127.0.0.1:8765"
	}
	if strings.HasPrefix(listen, "unix://") {
		return listen
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	addr := net.JoinHostPort(host, port)
	if tls {
		return "https://" + addr
	}
	return addr
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// splitTarget parses USER[/SERVER]. A user name may itself contain '/', so
// the server is what follows the last '/' only when --server is not given.
func splitTarget(arg, serverFlag string, serverSet bool) (string, string) {
	if serverSet {
		return arg, serverFlag
	}
	if i := strings.LastIndex(arg, "/"); i > 0 {
		return arg[:i], arg[i+1:]
	}
	return arg, ""
}

func newPs() *cobra.Command {
	var cf clientFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ps",
		Short: "List the servers the daemon runs",
		Long: "List every server: user, server name, state, env (OUTDATED when its lock is not the env's current one), image, age; " +
			"then each pool of warm servers (spawnd.yaml pools): how many it keeps now, how many are ready and booting, and how many starts took one or found none.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			servers, err := c.List(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSONOut(cmd.OutOrStdout(), servers)
			}
			if err := printServers(cmd.OutOrStdout(), servers, time.Now()); err != nil {
				return err
			}
			pools, err := c.Pools(cmd.Context())
			if err != nil {
				return err
			}
			return printPools(cmd.OutOrStdout(), pools)
		},
	}
	cf.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// printPools prints the pools of warm servers, if there are any.
func printPools(out io.Writer, pools []api.Pool) error {
	if len(pools) == 0 {
		return nil
	}
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POOL	WANT	READY	WARMING	TAKEN	MISSED	NOTE")
	for _, p := range pools {
		note := ""
		if p.Cold != "" {
			note = "starts cold: " + p.Cold
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%s\n", p.Name, p.Want, p.Ready, p.Warming, p.Taken, p.Missed, note)
	}
	return tw.Flush()
}

func printServers(out io.Writer, servers []api.Server, now time.Time) error {
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "USER\tSERVER\tSTATE\tENV\tIMAGE\tAGE")
	for _, s := range servers {
		state := string(s.State)
		if s.State == api.StateRunning && !s.Ready {
			state += " (starting)"
		}
		if s.Reason != "" && s.State != api.StateRunning {
			state += " (" + s.Reason + ")"
		}
		env := s.Env
		if s.Outdated {
			env += " OUTDATED"
		}
		server := s.Server
		if server == "" {
			server = "-"
		}
		age := "-"
		if !s.StartedAt.IsZero() {
			age = now.Sub(s.StartedAt).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.User, server, state, env, s.Image, age)
	}
	return tw.Flush()
}

func newStop() *cobra.Command {
	var cf clientFlags
	var server string
	cmd := &cobra.Command{
		Use:   "stop USER[/SERVER]",
		Short: "Stop a server; its home stays",
		Long:  "Stop a user's server: the container is stopped (SIGTERM, then SIGKILL after stop_grace) and removed. The home is never touched.",
		Example: `  spawnd stop alice          # the default server
  spawnd stop alice/gpu      # the named server "gpu"
  spawnd stop 'a/b' --server ''   # a user name with a slash`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			user, srv := splitTarget(args[0], server, cmd.Flags().Changed("server"))
			if _, err := c.Stop(cmd.Context(), user, srv); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "stopped %s\n", args[0])
			return nil
		},
	}
	cf.register(cmd)
	cmd.Flags().StringVar(&server, "server", "", "server name (use when the user name contains '/')")
	return cmd
}

func newStatus() *cobra.Command {
	var cf clientFlags
	var server string
	cmd := &cobra.Command{
		Use:   "status USER[/SERVER]",
		Short: "Show one server as JSON",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			user, srv := splitTarget(args[0], server, cmd.Flags().Changed("server"))
			s, err := c.Status(cmd.Context(), user, srv)
			if err != nil {
				return err
			}
			return writeJSONOut(cmd.OutOrStdout(), s)
		},
	}
	cf.register(cmd)
	cmd.Flags().StringVar(&server, "server", "", "server name (use when the user name contains '/')")
	return cmd
}

func newHealth() *cobra.Command {
	var cf clientFlags
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "health",
		Short: "Exit 0 when the daemon answers and its engine is up (for container healthchecks)",
		Long: `Ask the daemon's health endpoint (no token needed) and exit 0 when it answers
and its engine is up, 1 otherwise, printing what it said: for a compose or
Docker HEALTHCHECK, and for scripts that wait for spawnd.`,
		Example: "  spawnd health --addr 127.0.0.1:8765",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			addr := cf.addr
			if !cmd.Flags().Changed("addr") {
				if a, _, err := cf.settings(); err == nil {
					addr = a
				} else if env := os.Getenv("SPAWND_ADDR"); env != "" {
					addr = env
				}
			}
			c, err := api.NewClient(addr, "")
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			h, err := c.Health(ctx)
			if err != nil {
				return fmt.Errorf("spawnd at %s: %w", addr, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "spawnd at %s: %s (engine %s)\n", addr, h.Status, h.Engine)
			if h.Engine != "up" {
				return errors.New("the daemon's engine is down")
			}
			return nil
		},
	}
	cf.register(cmd)
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "give up after this long")
	return cmd
}

func newLogs() *cobra.Command {
	var cf clientFlags
	var server string
	var tail int
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs USER[/SERVER]",
		Short: "Print the last lines of a server's log (secrets redacted)",
		Long: `Print the last --tail lines of a server's container log: for finding out why
a student's server died. Values of the server's secret environment (tokens,
passwords, keys) and anything token-like are replaced by [redacted]; lines
are bounded. --follow (-f) goes on printing lines as the server writes them,
until Ctrl-C or the server ends. A server that is stopped has no log left: a
failed start's last lines are in spawnd status (log_tail) and on the spawn
page.`,
		Example: "  spawnd logs alice\n  spawnd logs alice/gpu --tail 500\n  spawnd logs -f alice",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if tail < 1 {
				return fmt.Errorf("--tail: %d; give a positive number of lines", tail)
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			user, srv := splitTarget(args[0], server, cmd.Flags().Changed("server"))
			if follow {
				return c.FollowLogs(cmd.Context(), user, srv, tail, cmd.OutOrStdout())
			}
			out, err := c.Logs(cmd.Context(), user, srv, tail)
			if err != nil {
				return err
			}
			_, err = io.WriteString(cmd.OutOrStdout(), out)
			return err
		},
	}
	cf.register(cmd)
	cmd.Flags().StringVar(&server, "server", "", "server name (use when the user name contains '/')")
	cmd.Flags().IntVar(&tail, "tail", 100, "how many of the last lines (at most 2000)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "go on printing lines as the server writes them, until Ctrl-C or the server ends")
	return cmd
}

func newHome() *cobra.Command {
	home := &cobra.Command{Use: "home", Short: "Admin actions on users' homes"}
	var cf clientFlags
	var yes bool
	del := &cobra.Command{
		Use:   "delete USER",
		Short: "Delete a user's home and every file in it (refused while a server of the user exists)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !yes {
				return errors.New("this deletes every file of the user; repeat with --yes")
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Minute)
			defer cancel()
			if err := c.DeleteHome(ctx, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted the home of %s\n", args[0])
			return nil
		},
	}
	cf.register(del)
	del.Flags().BoolVar(&yes, "yes", false, "confirm the deletion")

	var to string
	var timeout time.Duration
	move := &cobra.Command{
		Use:   "move USER --to NODE",
		Short: "Move a user's node-pinned home to another swarm node (engine.homes: node)",
		Long: `Move a user's home, pinned to one node's disk (engine.homes: node), to another
node: the home is streamed between two helper jobs over the users' overlay
network, its SHA-256 checked at both ends, and the user's servers run on the
new node from then on. The old copy stays on the node it left, renamed
(.USER.moved-TIME), until an admin removes it. Refused while any server of
the user exists: stop them first.`,
		Example: "  spawnd home move alice --to node-b",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if to == "" {
				return errors.New("--to: name the node (its host name or ID: docker node ls)")
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			fmt.Fprintf(cmd.ErrOrStderr(), "moving the home of %s to %s…\n", args[0], to)
			mv, err := c.MoveHome(ctx, args[0], to)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "moved the home of %s from %s to %s: %d bytes, sha256 %s; the old copy is %s on %s\n",
				args[0], mv.From, mv.To, mv.Bytes, mv.SHA256, mv.OldCopy, mv.From)
			return nil
		},
	}
	cf.register(move)
	move.Flags().StringVar(&to, "to", "", "the node to move the home to (host name or node ID)")
	move.Flags().DurationVar(&timeout, "timeout", 30*time.Minute, "give up after this long")
	migrate := &cobra.Command{
		Use:   "migrate USER...",
		Short: "Give homes made under home_owner env (uid 1000 for everyone) to their people's own uids",
		Long: `With home_owner: system or range, each person's home belongs to their own uid
on the host. Homes made before (home_owner: env) belong to the env's user
(uid 1000), and a start refuses them rather than change them silently; this
command migrates them, one user at a time, while the user has no server:

  range   the home stays under homes_root and gets a uid of uid_range
          (every file of the env's user and group is given to it)
  system  the home's files move into the account's own home directory
          (e.g. /home/alice; same file system, refused if a name is in
          both) and become the account's; the emptied old directory goes

Nothing is deleted. spawnd doctor lists the homes still to migrate.`,
		Example: "  spawnd home migrate alice bob",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.client()
			if err != nil {
				return err
			}
			var failed []string
			for _, u := range args {
				ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
				mg, err := c.MigrateHome(ctx, u)
				cancel()
				switch {
				case err != nil:
					fmt.Fprintf(cmd.ErrOrStderr(), "%s: %v\n", u, err)
					failed = append(failed, u)
				case !mg.Migrated:
					fmt.Fprintf(cmd.OutOrStdout(), "%s: already owned by uid %d; nothing to do\n", u, mg.ToUID)
				default:
					fmt.Fprintf(cmd.OutOrStdout(), "%s: migrated from uid %d to uid %d (%d files)\n", u, mg.FromUID, mg.ToUID, mg.Files)
				}
			}
			if len(failed) > 0 {
				return fmt.Errorf("%d of %d homes not migrated: %s", len(failed), len(args), strings.Join(failed, " "))
			}
			return nil
		},
	}
	cf.register(migrate)
	migrate.Flags().DurationVar(&timeout, "timeout", 30*time.Minute, "give up on one home after this long")
	home.AddCommand(del, move, migrate)
	return home
}
