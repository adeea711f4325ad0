package swarm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/spawnd/engineapi"
)

// FollowLogs writes a service's last tail log lines to w, then each one
// as it comes, until ctx ends or the task does.
func (s *Swarm) FollowLogs(ctx context.Context, id string, tail int, w io.Writer) error {
	rc, err := s.cli.ServiceLogs(ctx, id, client.ServiceLogsOptions{ShowStdout: true, ShowStderr: true, Follow: true, Tail: strconv.Itoa(tail)})
	if err != nil {
		return fmt.Errorf("following the log of service %s: %w", id, err)
	}
	defer rc.Close()
	if _, err := stdcopy.StdCopy(w, w, rc); err != nil && ctx.Err() == nil {
		return fmt.Errorf("following the log of service %s: %w", id, err)
	}
	return nil
}

// Logs implements backend.Runtime: the service's log through the manager.
func (s *Swarm) Logs(ctx context.Context, id string, tail int) (string, error) {
	rc, err := s.cli.ServiceLogs(ctx, id, client.ServiceLogsOptions{ShowStdout: true, ShowStderr: true, Tail: strconv.Itoa(tail)})
	if err != nil {
		return "", fmt.Errorf("reading the logs of service %s: %w", id, err)
	}
	defer rc.Close()
	out, err := engineapi.ReadLogs(rc)
	if err != nil && !errors.Is(err, io.EOF) {
		return out, fmt.Errorf("reading the logs of service %s: %w", id, err)
	}
	return out, nil
}
