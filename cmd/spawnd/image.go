package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/images"
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
	img := &cobra.Command{Use: "image", Short: "Move env images: push to a registry, save to and load from OCI archives"}
	var bf buildFlags

	push := &cobra.Command{
		Use:   "push ENV REGISTRY",
		Short: "Push an env's image to a registry; prints the reference by digest",
		Long: `Push the image of ENV (a spec file or an env name) to REGISTRY as
REGISTRY/spawnd/<env>:<lock digest>, and print the reference by digest that
other machines (and Swarm services) should pull.`,
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
			ref, err := images.Push(cmd.Context(), eng, l.Tag(), dst)
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
	for _, c := range []*cobra.Command{push, save, load} {
		c.Flags().StringVar(&bf.engine, "engine", "", "Docker engine address (default: DOCKER_HOST or the local socket)")
		img.AddCommand(c)
	}
	return img
}
