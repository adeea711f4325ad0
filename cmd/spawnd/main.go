// Command spawnd gives a whole team the identical Jupyter environment: it
// serves the API that JupyterHub's SpawndSpawner calls (spawnd serve) and
// talks to a running daemon (spawnd ps, spawnd stop, spawnd home delete).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		if !errors.Is(err, errSilentExit) {
			fmt.Fprintln(os.Stderr, "spawnd:", err)
		}
		os.Exit(1)
	}
}

// errSilentExit makes spawnd exit 1 after a command already said why.
var errSilentExit = errors.New("exit 1")
