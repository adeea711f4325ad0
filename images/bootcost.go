package images

import (
	"context"
	"fmt"

	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/launcher"
)

// launcherDir is where BootCost puts the launcher in its container.
const launcherDir = "/opt/spawnd-launcher"

// BootCost measures what every start of an env pays before its server
// knows whom it serves: the CPU time to import its command's entry point
// and the server extensions the image enables, and the five top-level
// packages that took longest (python -X importtime, self time), in a
// throw-away container of image with no network (spawnd's warm launcher in
// its cost mode). An env whose command is not a Python console script
// cannot be pre-warmed: the answer says why, with no error.
func BootCost(ctx context.Context, eng backend.Builder, image string, cmd []string) (launcher.BootCost, error) {
	if len(cmd) == 0 {
		return launcher.BootCost{}, fmt.Errorf("the env has no command to measure")
	}
	files := make(map[string][]byte, len(launcher.Names))
	for _, n := range launcher.Names {
		files[launcherDir+"/"+n] = launcher.File(n)
	}
	res, err := eng.RunCapture(ctx, backend.RunSpec{Image: image, Network: noNetwork, Labels: map[string]string{labels.Lock: "boot-cost"},
		Cmd: launcher.Cmd(launcherDir, "", true, cmd), Files: files})
	if err != nil {
		return launcher.BootCost{}, fmt.Errorf("measuring the boot cost: %w", err)
	}
	if res.ExitCode != 0 {
		return launcher.BootCost{}, fmt.Errorf("measuring the boot cost: the launcher exited with %d: %s", res.ExitCode, lastLines(string(res.Stderr), 5))
	}
	return launcher.ParseBootCost(res.Stdout)
}
