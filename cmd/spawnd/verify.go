package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/spawnd/docker"
)

func newVerify() *cobra.Command {
	var bf buildFlags
	var sameEngine bool
	cmd := &cobra.Command{
		Use:   "verify SPEC",
		Short: "Rebuild an env's lock from scratch and check it gives the same image",
		Long: `Rebuild the image of SPEC's lock in a scratch engine, normalize it as spawnd
build does, and compare it with the lock's image on the engine. Prints
"identical" and the image ID, or every file that differs (exit 1). The lock
and its image are never changed.

The scratch engine is a private dockerd with a data root of its own in
/tmp (an empty image store and build cache, no network), started for the
rebuild and removed after it; it needs root and dockerd. The base image is
copied into it from the engine, the package files come from the package
cache. With --same-engine the rebuild runs on the engine itself, without
its build cache, under a temporary tag that is removed.`,
		Example: "  spawnd verify envs/team.yaml",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, opts, eng, err := bf.open(cmd, args[0])
			if err != nil {
				return err
			}
			defer eng.Close()
			in := images.VerifyEngine(eng)
			if !sameEngine {
				sc, err := docker.StartScratch(cmd.Context())
				if err != nil {
					return fmt.Errorf("%w; or rebuild on the engine itself with --same-engine", err)
				}
				defer sc.Close()
				in = sc
			}
			res, err := images.Verify(cmd.Context(), eng, in, path, opts)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if res.Identical {
				fmt.Fprintf(out, "identical: %s %s\n", res.Tag, res.ImageID)
				return nil
			}
			fmt.Fprintf(out, "different: %s is %s, the rebuild is %s\n", res.Tag, res.ImageID, res.RebuiltID)
			for _, d := range res.Differences {
				fmt.Fprintln(out, "  "+d)
			}
			return fmt.Errorf("the rebuild of %s differs in %d places", res.Tag, len(res.Differences))
		},
	}
	bf.register(cmd)
	cmd.Flags().BoolVar(&sameEngine, "same-engine", false, "rebuild on the engine itself (without its build cache) instead of a scratch engine")
	return cmd
}
