package archtest

import (
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// rooms reads the rooms table of docs/DESIGN-NOTES.md ("Rooms and
// arrows"): each room (a package, module-relative) and what it may import
// of ours.
func rooms(t *testing.T) map[string][]string {
	t.Helper()
	b, err := os.ReadFile("../../docs/DESIGN-NOTES.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "| room | owns | may import |")
	if i < 0 {
		t.Fatal("docs/DESIGN-NOTES.md has no rooms table (| room | owns | may import |)")
	}
	table := s[i:]
	if j := strings.Index(table, "\n\n"); j >= 0 {
		table = table[:j]
	}
	tick := regexp.MustCompile("`([^`]+)`")
	out := map[string][]string{}
	for _, line := range strings.Split(table, "\n")[2:] {
		cells := strings.Split(strings.Trim(line, "| "), " | ")
		if len(cells) < 3 {
			t.Fatalf("a rooms row without three cells: %q", line)
		}
		name := tick.FindStringSubmatch(cells[0])
		if name == nil {
			t.Fatalf("a rooms row whose room is not `quoted`: %q", line)
		}
		var may []string
		if last := cells[len(cells)-1]; last != "nothing of ours" {
			for _, m := range tick.FindAllStringSubmatch(last, -1) {
				may = append(may, m[1])
			}
			if len(may) == 0 {
				t.Fatalf("room %s: its may-import cell %q names no package (write `pkg`, …, or nothing of ours)", name[1], last)
			}
		}
		out[name[1]] = may
	}
	return out
}

// TestImportsFollowTheRooms: every package of the module has a row in the
// rooms table, and imports (in its own files) only packages of ours its
// row allows. A new arrow is an edit of the table, not a gap in a list of
// forbidden ones.
func TestImportsFollowTheRooms(t *testing.T) {
	allowed := rooms(t)
	out, err := exec.Command("go", "list", "-json", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	seen := map[string]bool{}
	for dec.More() {
		var p pkgInfo
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		room := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		may, ok := allowed[room]
		if !ok {
			t.Errorf("package %s has no row in the rooms table of docs/DESIGN-NOTES.md: add one (what it owns, what it may import)", room)
			continue
		}
		seen[room] = true
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module+"/") {
				continue
			}
			dep := strings.TrimPrefix(imp, module+"/")
			if !slices.Contains(may, dep) {
				t.Errorf("%s imports %s, which its row in docs/DESIGN-NOTES.md does not allow (may import: %v): remove the arrow, or write the decision into the table", room, dep, may)
			}
		}
	}
	for room := range allowed {
		if !seen[room] {
			t.Errorf("the rooms table names %s, which is not a package of the module: remove its row", room)
		}
	}
}
