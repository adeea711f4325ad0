package deploy

import (
	"bufio"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestEnvExampleMatchesCompose: every setting .env.example lists is one the
// compose file reads, with the same default, and every setting the compose
// file reads is listed (the example is the stack's settings page).
func TestEnvExampleMatchesCompose(t *testing.T) {
	compose, err := os.ReadFile("docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	defaults := map[string]string{}
	for _, m := range regexp.MustCompile(`\$\{([A-Z_]+):-([^}]*)\}`).FindAllStringSubmatch(string(compose), -1) {
		if prev, ok := defaults[m[1]]; ok && prev != m[2] && !internal[m[1]] {
			t.Errorf("docker-compose.yml gives %s two defaults: %q and %q", m[1], prev, m[2])
		}
		defaults[m[1]] = m[2]
	}
	f, err := os.Open(".env.example")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	listed := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.Contains(v, "#") {
			t.Errorf(".env.example: %q is not KEY=VALUE without a comment on the line", line)
			continue
		}
		listed[k] = true
		def, used := defaults[k]
		switch {
		case k == "COMPOSE_PROJECT_NAME" && v == "spawnd":
		case !used:
			t.Errorf(".env.example lists %s, which docker-compose.yml does not read", k)
		case def != v:
			t.Errorf(".env.example says %s=%s; docker-compose.yml's default is %q", k, v, def)
		}
	}
	for k := range defaults {
		if !listed[k] && !internal[k] {
			t.Errorf("docker-compose.yml reads %s; .env.example does not list it", k)
		}
	}
}

// internal are the compose file's build arguments and the dev login's
// password, which scripts/compose-up sets; not settings for an admin.
var internal = map[string]bool{"GO_IMAGE": true, "BASE_IMAGE": true, "SPAWND_HUB_PASSWORD": true}
