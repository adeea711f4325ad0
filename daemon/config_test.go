package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spawnd/spawnd/spawnd"
)

// TestConfigTokenFilesAndBackend: the daemon refuses a token file others can
// read (the rule doctor checks, api.CheckTokenFile) and a backend it does not
// have, naming the key and the fix; the backend defaults to docker.
func TestConfigTokenFilesAndBackend(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mode    os.FileMode // of the token file
		metrics os.FileMode // of the metrics token file; 0: none
		backend string
		want    string // "" = valid
	}{
		{name: "private token", mode: 0o600},
		{name: "token readable by others", mode: 0o644, want: "token_file: "},
		{name: "token readable by the group", mode: 0o640, want: "chmod 600"},
		{name: "metrics token readable by others", mode: 0o600, metrics: 0o604, want: "metrics_token_file: "},
		{name: "private metrics token", mode: 0o600, metrics: 0o400},
		{name: "docker backend", mode: 0o600, backend: "docker"},
		{name: "unknown backend", mode: 0o600, backend: "kubernetes", want: `engine.backend: "kubernetes" is not one of [docker swarm]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := Config{TokenFile: filepath.Join(dir, "token"), Engine: EngineConfig{Backend: tc.backend},
				Config: spawnd.Config{HomesRoot: dir, Envs: map[string]spawnd.EnvConfig{"team": {Image: "img:1"}}}}
			if err := os.WriteFile(cfg.TokenFile, []byte("0123456789abcdef0123\n"), tc.mode); err != nil {
				t.Fatal(err)
			}
			if tc.metrics != 0 {
				cfg.MetricsTokenFile = filepath.Join(dir, "metrics-token")
				if err := os.WriteFile(cfg.MetricsTokenFile, []byte("fedcba9876543210fedc\n"), tc.metrics); err != nil {
					t.Fatal(err)
				}
			}
			err := cfg.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if cfg.Engine.Backend != "docker" {
					t.Errorf("backend %q, want the default docker", cfg.Engine.Backend)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want it to say %q", err, tc.want)
			}
		})
	}
}
