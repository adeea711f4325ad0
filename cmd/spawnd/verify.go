package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/spawnd/spawnd/images"
)

func newVerify() *cobra.Command {
	var bf buildFlags
	cmd := &cobra.Command{
		Use:   "verify SPEC",
		Short: "Rebuild an env's lock from scratch and check it gives the same image",
		Long: `Rebuild the image of SPEC's lock without the build cache, under a temporary
tag, normalize it as spawnd build does, and compare it with the lock's image.
Prints "identical" and the image ID, or every file that differs (exit 1).
The lock and its image are never changed; the temporary image is removed.

The rebuild runs on the same engine as the image (not a scratch engine), so
it checks that the build itself is deterministic; that two engines agree is
what images.TestSameLockSameDigestOnTwoEngines checks.`,
		Example: "  spawnd verify envs/team.yaml",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, opts, eng, err := bf.open(cmd, args[0])
			if err != nil {
				return err
			}
			defer eng.Close()
			res, err := images.Verify(cmd.Context(), eng, path, opts)
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
	return cmd
}
