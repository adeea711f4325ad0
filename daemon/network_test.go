package daemon_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/daemon"
	"github.com/spawnd/spawnd/doctor"
	"github.com/spawnd/spawnd/internal/testenv"
)

// TestNetworkMustMatchTheConfig: a daemon refuses to run on a user network
// that contradicts its config, on the real engine: Docker's default bridge,
// or a network of the configured name whose inter-container traffic is on
// while network.icc is off. It exits with a message naming the fix, and
// starts nothing.
func TestNetworkMustMatchTheConfig(t *testing.T) {
	eng := testenv.Engine(t)
	cases := []struct {
		name, want string
		prepare    func(t *testing.T, cfg *daemon.Config)
	}{
		{"Docker's default bridge", "Docker's own networks", func(t *testing.T, cfg *daemon.Config) {
			cfg.Network.Name = "bridge"
		}},
		{"a network with inter-container traffic on", "network.icc", func(t *testing.T, cfg *daemon.Config) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := testenv.Client(eng).NetworkCreate(ctx, cfg.Network.Name, client.NetworkCreateOptions{
				Driver: "bridge", Labels: map[string]string{"io.spawnd.test": "1", "io.spawnd.instance": cfg.Instance},
			})
			if err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t, eng)
			tc.prepare(t, &cfg)
			d, err := daemon.New(cfg, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err = d.Run(ctx)
			if err == nil || !strings.Contains(err.Error(), tc.want) || ctx.Err() != nil {
				t.Fatalf("Run: %v (deadline hit: %v), want an error naming %q", err, ctx.Err() != nil, tc.want)
			}
			t.Logf("refused: %v", err)
			// spawnd doctor says the same, on the same engine.
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			var net doctor.Result
			for _, r := range doctor.Run(ctx, doctor.Input{Config: &cfg.Config, Token: cfg.Token, Engine: eng}) {
				if r.Check == "network" {
					net = r
				}
			}
			if net.Status != doctor.Fail || net.Fix == "" {
				t.Fatalf("doctor's network check: %+v", net)
			}
			if servers, _ := d.Manager().List(); len(servers) != 0 {
				t.Fatalf("servers on a refused network: %+v", servers)
			}
		})
	}
}
