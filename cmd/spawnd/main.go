// Command spawnd gives a whole team the identical Jupyter environment: it
// serves the API that JupyterHub's SpawndSpawner calls (spawnd serve) and
// talks to a running daemon (spawnd ps, spawnd stop, spawnd home delete).
package main

import (
	"context"
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
		fmt.Fprintln(os.Stderr, "spawnd:", err)
		os.Exit(1)
	}
}
