package swarm

import (
	"errors"
	"regexp"
	"strconv"
	"testing"

	"github.com/containerd/errdefs"
)

// TestHelperExitsAreOneTable: every status a helper script can exit with
// is in helperExits, and every status there is one a script uses, so a new
// exit is words for the admin, not "the helper exited with status N".
func TestHelperExitsAreOneTable(t *testing.T) {
	// exit N (sh), sys.exit(N) and give_up(N) (py); 31 if whole else 32.
	re := regexp.MustCompile(`(?:\bexit |sys\.exit\(|give_up\()(\d+)(?: if \w+ else (\d+))?`)
	used := map[int]string{}
	for name, script := range map[string]string{"make.sh": makeScript, "delete.sh": deleteScript, "receive.py": receiveScript, "send.py": sendScript} {
		for _, m := range re.FindAllStringSubmatch(script, -1) {
			for _, g := range m[1:] {
				if g == "" {
					continue
				}
				n, _ := strconv.Atoi(g)
				used[n] = name
			}
		}
	}
	if len(used) < 10 {
		t.Fatalf("found %d exit statuses in the helpers (%v); the pattern no longer reads them", len(used), used)
	}
	for code, script := range used {
		if _, ok := helperExits[code]; !ok {
			t.Errorf("%s exits with %d, which helperExits does not explain", script, code)
		}
	}
	for code := range helperExits {
		if _, ok := used[code]; !ok {
			t.Errorf("helperExits explains %d, which no helper exits with", code)
		}
	}
}

func TestHelperExitClasses(t *testing.T) {
	tests := []struct {
		code int
		want error
	}{{22, errdefs.ErrConflict}, {24, errdefs.ErrNotFound}, {40, errdefs.ErrNotFound}, {30, errdefs.ErrConflict}, {31, nil}, {99, nil}}
	kinds := []error{errdefs.ErrConflict, errdefs.ErrNotFound}
	for _, tt := range tests {
		err := error(&helperExit{what: "w", code: tt.code, node: "n"})
		for _, k := range kinds {
			if got := errors.Is(err, k); got != (k == tt.want) {
				t.Errorf("exit %d: errors.Is(%v) = %v", tt.code, k, got)
			}
		}
		if tt.code == 99 && err.Error() != "w on n: the helper exited with status 99 (docker service logs of the helper, or the node's daemon log, say why)" {
			t.Errorf("an unknown status reads %q", err.Error())
		}
	}
}
