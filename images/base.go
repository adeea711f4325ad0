package images

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd/backend"
)

// basePackages lists what an image holds, by dpkg: "name=version" lines.
func basePackages(ctx context.Context, eng Engine, image string, opts Options) ([]string, error) {
	res, err := eng.RunCapture(ctx, backend.RunSpec{Image: image, Network: noNetwork, Labels: map[string]string{labels.Lock: "base"},
		Cmd: []string{"dpkg-query", "-W", "-f", "${Package}=${Version}\\n"}})
	if err != nil {
		return nil, fmt.Errorf("listing the packages of the base image: %w", err)
	}
	if res.ExitCode != 0 {
		return nil, fmt.Errorf("listing the packages of the base image %s with dpkg-query failed (exit %d): %s; the base must be a Debian image", image, res.ExitCode, quoteTool(res))
	}
	var pkgs []string
	for _, ln := range strings.Split(string(res.Stdout), "\n") {
		if ln = strings.TrimSpace(ln); ln != "" {
			pkgs = append(pkgs, ln)
		}
	}
	sort.Strings(pkgs)
	return pkgs, nil
}

// BaseMismatchError is a lock whose base this engine does not have: what
// the engine has under the base's name, and how its packages differ.
type BaseMismatchError struct {
	Ref, Want, Have string
	// Differences are "name: lock VERSION, here VERSION" lines (a version is
	// "none" when the package is absent).
	Differences []string
}

func (e *BaseMismatchError) Error() string {
	var b strings.Builder
	if e.Have == "" {
		fmt.Fprintf(&b, "the lock's base image %s (%s) is not on this engine", e.Ref, e.Want)
	} else {
		fmt.Fprintf(&b, "the lock's base image is %s %s, but %s here is %s", e.Ref, e.Want, e.Ref, e.Have)
	}
	if len(e.Differences) > 0 {
		shown := e.Differences
		if len(shown) > 10 {
			shown = shown[:10]
		}
		fmt.Fprintf(&b, "; they differ in %d packages:\n  %s", len(e.Differences), strings.Join(shown, "\n  "))
		if len(e.Differences) > len(shown) {
			fmt.Fprintf(&b, "\n  (and %d more)", len(e.Differences)-len(shown))
		}
		b.WriteString("\n")
	} else {
		b.WriteString("; ")
	}
	b.WriteString("the Debian mirror has moved since the lock was made, or the base was made elsewhere. Rebuild exactly this lock from a bundle of it (spawnd build --from-bundle DIR), or make a new lock against this base (spawnd build --relock)")
	return b.String()
}

// baseMismatch explains a lock whose base is not on the engine.
func baseMismatch(ctx context.Context, eng Engine, l *envs.Lock, opts *Options) error {
	e := &BaseMismatchError{Ref: l.Base.Ref, Want: l.Base.Digest}
	have, err := eng.ImageInspect(ctx, l.Base.Ref)
	if err != nil {
		return e
	}
	e.Have = have.ID
	pkgs, err := basePackages(ctx, eng, have.ID, *opts)
	if err != nil || len(l.Base.Packages) == 0 {
		return e
	}
	e.Differences = packageDifferences(l.Base.Packages, pkgs)
	return e
}

// packageDifferences compares two "name=version" lists.
func packageDifferences(lock, here []string) []string {
	parse := func(list []string) map[string]string {
		m := map[string]string{}
		for _, p := range list {
			n, v, _ := strings.Cut(p, "=")
			m[n] = v
		}
		return m
	}
	a, b := parse(lock), parse(here)
	names := map[string]bool{}
	for n := range a {
		names[n] = true
	}
	for n := range b {
		names[n] = true
	}
	var out []string
	for n := range names {
		va, vb := a[n], b[n]
		if va == vb {
			continue
		}
		if va == "" {
			va = "none"
		}
		if vb == "" {
			vb = "none"
		}
		out = append(out, fmt.Sprintf("%s: lock %s, here %s", n, va, vb))
	}
	sort.Strings(out)
	return out
}
