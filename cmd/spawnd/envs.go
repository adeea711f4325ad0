package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/spawnd/backends"
)

func newEnvs() *cobra.Command {
	var cf clientFlags
	var output string
	cmd := &cobra.Command{
		Use:   "envs",
		Short: "Report each env's current lock and who still runs an older one",
		Long: `Report, per env: the current lock digest, its image, size and build time,
and how many servers run the current lock and each older one, with their
users (the drift after a relock). Servers on an older lock are the ones
spawnd ps marks OUTDATED; they move to the current lock when restarted.
The same report is GET /v1/envs, and spawnd_env_servers in /metrics.`,
		Example: "  spawnd envs\n  spawnd envs -o json | jq '.envs[] | select(.older > 0)'",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("-o: %q is not table or json", output)
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			rep, err := c.Envs(cmd.Context())
			if err != nil {
				return err
			}
			if output == "json" {
				return writeJSONOut(cmd.OutOrStdout(), rep)
			}
			pools, err := c.Pools(cmd.Context())
			if err != nil {
				return err
			}
			return printEnvs(cmd.OutOrStdout(), rep, pools)
		},
	}
	cf.register(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	cmd.AddCommand(newEnvsHistory(), newEnvsRollback())
	return cmd
}

func newEnvsHistory() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "history SPEC",
		Short: "List the locks an env was built from, newest first",
		Long: `List every lock the env was built from (spawnd build, or a build through
the API), newest first, from its history next to the spec
(envs/team.history/: each lock with the spec it was made from). The current
lock is marked; IMAGE says whether the engine still has its image (a
rollback to a lock without one rebuilds it).`,
		Example: "  spawnd envs history envs/team.yaml\n  spawnd envs history team -o json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("-o: %q is not table or json", output)
			}
			path, err := specPath(args[0])
			if err != nil {
				return err
			}
			hist, err := envs.History(path)
			if err != nil {
				return err
			}
			cur, _ := envs.ReadLock(envs.LockPath(path))
			rows := make([]historyRow, 0, len(hist))
			eng, _, err := backends.Local("")
			for _, e := range hist {
				r := historyRow{LockDigest: e.Lock.Digest, Created: e.Lock.Created.UTC().Format(time.RFC3339), Description: e.Lock.Description,
					Image: e.Lock.Tag(), Current: cur != nil && cur.Digest == e.Lock.Digest}
				if err == nil {
					r.ImagePresent = eng.CheckImage(cmd.Context(), e.Lock.Tag()) == nil
				}
				rows = append(rows, r)
			}
			if err == nil {
				eng.Close()
			}
			if output == "json" {
				return writeJSONOut(cmd.OutOrStdout(), rows)
			}
			if len(rows) == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "no history yet for %s: it starts with the next spawnd build\n", path)
				return nil
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "LOCK\tCREATED\tIMAGE\tDESCRIPTION")
			for _, r := range rows {
				lock, img := shortLock(r.LockDigest), "pruned"
				if r.Current {
					lock += " (current)"
				}
				if r.ImagePresent {
					img = r.Image
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", lock, r.Created, img, r.Description)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

// historyRow is one line of spawnd envs history.
type historyRow struct {
	LockDigest   string `json:"lock_digest"`
	Created      string `json:"created"`
	Description  string `json:"description"`
	Image        string `json:"image"`
	ImagePresent bool   `json:"image_present"`
	Current      bool   `json:"current"`
}

func newEnvsRollback() *cobra.Command {
	var bf buildFlags
	var to string
	cmd := &cobra.Command{
		Use:   "rollback SPEC [--to DIGEST]",
		Short: "Make an earlier lock of an env current again",
		Long: `Make a lock from the env's history (spawnd envs history) current again:
by default the newest one made before the current lock, or --to DIGEST (a
unique prefix is enough). Its image is rebuilt from the lock if the engine
no longer has it; then the lock and the spec it was made from are put back.
A running daemon switches to it within a second; servers still on the lock
rolled back from show as OUTDATED in spawnd ps and spawnd envs until they
restart. Homes are not touched. A digest that was never built is refused,
changing nothing.`,
		Example: "  spawnd envs rollback envs/team.yaml\n  spawnd envs rollback team --to 4cb39325661e",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, opts, eng, err := bf.open(cmd, args[0])
			if err != nil {
				return err
			}
			defer eng.Close()
			res, err := images.Rollback(cmd.Context(), eng, path, to, opts)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s is current: lock %s, image %s\n", path, res.Lock.Digest, res.Tag)
			return nil
		},
	}
	bf.register(cmd)
	cmd.Flags().StringVar(&to, "to", "", "the lock digest to roll back to (default: the newest one before the current lock)")
	return cmd
}

// printEnvs writes the drift report as a table, each older lock on a line
// of its own under its env with the servers that run it.
func printEnvs(out io.Writer, rep api.EnvReport, pools []api.Pool) error {
	warm := map[string]string{} // env -> "ready/wanted" of its pools
	for _, p := range pools {
		w := fmt.Sprintf("%d/%d", p.Ready, p.Want)
		if p.Cold != "" {
			w = "cold"
		}
		if warm[p.Env] != "" {
			w = warm[p.Env] + ", " + w
		}
		warm[p.Env] = w
	}
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ENV\tLOCK\tIMAGE\tSIZE\tBUILT\tCURRENT\tOLDER\tWARM")
	for _, e := range rep.Envs {
		name, size, built := e.Env, "-", "-"
		if !e.Configured {
			name += " (not configured)"
		}
		if e.ImageSize > 0 {
			size = fmt.Sprintf("%.0f MiB", float64(e.ImageSize)/(1<<20))
		}
		if e.Built != "" {
			built = e.Built
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", name, shortLock(e.LockDigest), orDash(e.Image), size, built, e.Current, e.Older, orDash(warm[e.Env]))
		for _, l := range e.Locks {
			if l.Current {
				continue
			}
			var who []string
			for _, s := range l.Servers {
				if s.Server != "" {
					who = append(who, s.User+"/"+s.Server)
				} else {
					who = append(who, s.User)
				}
			}
			fmt.Fprintf(tw, "  older\t%s\t%s\t\t\t\t%d: %s\n", shortLock(l.LockDigest), orDash(l.Image), len(l.Servers), strings.Join(who, ", "))
		}
	}
	return tw.Flush()
}

// shortLock is a lock digest's first 12 hex digits, as image tags show it.
func shortLock(d string) string {
	d = strings.TrimPrefix(d, "sha256:")
	if len(d) > 12 {
		d = d[:12]
	}
	return orDash(d)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newRollout() *cobra.Command {
	var cf clientFlags
	var all, dryRun bool
	var users []string
	var idle time.Duration
	var concurrency int
	cmd := &cobra.Command{
		Use:   "rollout ENV",
		Short: "Move servers still on an older lock of ENV onto the current one",
		Long: `Move the servers of ENV that run an older lock (spawnd envs: OLDER) onto the
current one. A server moves by being stopped: its home stays, the hub sees
it gone, and the user's next start runs the current lock and opens with a
notice that the env was updated while they were away.

By default only servers idle for --idle move, by the hub's activity (the
daemon's hub.url and hub.token_file); --users names servers to move anyway,
--all moves every one. --dry-run says who would move. Stops run --concurrency
at a time. Run it again after an interruption: it moves what is left.`,
		Example: "  spawnd rollout team --dry-run\n  spawnd rollout team --idle 30m\n  spawnd rollout team --users ann,bob",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if all && len(users) > 0 {
				return errors.New("--all and --users do not go together")
			}
			c, err := cf.client()
			if err != nil {
				return err
			}
			res, err := c.Rollout(cmd.Context(), args[0], api.RolloutRequest{All: all, Users: users, IdleSeconds: int(idle / time.Second),
				DryRun: dryRun, Concurrency: concurrency})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if len(res.Items) == 0 {
				fmt.Fprintf(out, "every server of %s runs its current lock %s\n", res.Env, shortLock(res.To))
				return nil
			}
			tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "USER\tSERVER\tFROM\tMOVED\tWHY")
			moved := 0
			for _, it := range res.Items {
				if it.Moved {
					moved++
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\n", it.User, orDash(it.Server), shortLock(it.From), it.Moved, it.Why)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(out, "moved %d of %d servers on older locks to %s\n", moved, len(res.Items), shortLock(res.To))
			return nil
		},
	}
	cf.register(cmd)
	cmd.Flags().BoolVar(&all, "all", false, "move every server on an older lock, idle or not")
	cmd.Flags().StringSliceVar(&users, "users", nil, "move these users' servers, idle or not (comma-separated)")
	cmd.Flags().DurationVar(&idle, "idle", time.Hour, "move servers idle at least this long (by the hub's activity)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "say who would move; move nobody")
	cmd.Flags().IntVar(&concurrency, "concurrency", 4, "how many servers stop at once")
	return cmd
}
