package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/spawnd/spawnd/api"
)

// clientFlags are the flags every client command shares.
type clientFlags struct {
	addr      string
	tokenFile string
}

func (c *clientFlags) register(cmd *cobra.Command) {
	def := os.Getenv("SPAWND_ADDR")
	if def == "" {
		def = "127.0.0.1:8765"
	}
	cmd.Flags().StringVar(&c.addr, "addr", def, "daemon address: host:port, http(s)://host:port or unix:///path.sock (env SPAWND_ADDR)")
	cmd.Flags().StringVar(&c.tokenFile, "token-file", "", "file with the API token (env SPAWND_TOKEN_FILE; or SPAWND_TOKEN)")
}

func (c *clientFlags) client() (*api.Client, error) {
	tok, err := clientToken(c.tokenFile)
	if err != nil {
		return nil, err
	}
	return api.NewClient(c.addr, tok)
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
		Long:  "List every server: user, server name, state, env (OUTDATED when its lock is not the env's current one), image, age.",
		Args:  cobra.NoArgs,
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
			return printServers(cmd.OutOrStdout(), servers, time.Now())
		},
	}
	cf.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
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
	home.AddCommand(del)
	return home
}
