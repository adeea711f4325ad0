package spawnd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEscape(t *testing.T) {
	cases := []struct{ in, want string }{
		{"alice", "alice"},
		{"Alice", "-41lice"},
		{"alice.smith@example.org", "alice-2esmith-40example-2eorg"},
		{"a/b", "a-2fb"},
		{"a-b", "a-2db"},
		{"..", "-2e-2e"},
		{"é", "-c3-a9"},
		{"x_y", "x-5fy"},
	}
	for _, tc := range cases {
		if got := Escape(tc.in); got != tc.want {
			t.Errorf("Escape(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestEscapeInjectiveOnLookalikes(t *testing.T) {
	names := []string{"alice", "Alice", "ALICE", "alice-", "alice-2d", "alice_", "a.b", "a-2eb", "a/b", "a%2fb",
		"x" + strings.Repeat("A", 200), "x" + strings.Repeat("A", 201), strings.Repeat("-", 100), strings.Repeat("-2d", 34)}
	seen := map[string]string{}
	for _, n := range names {
		e := Escape(n)
		if prev, ok := seen[e]; ok {
			t.Fatalf("%q and %q both escape to %q", prev, n, e)
		}
		seen[e] = n
	}
}

func TestContainerNamesDistinct(t *testing.T) {
	pairs := [][2]string{{"a", ""}, {"a", "b"}, {"a_b", ""}, {"a", "b_c"}, {"a_b", "c"}, {"a-5fb", ""}}
	seen := map[string]bool{}
	for _, p := range pairs {
		n := ContainerName("default", p[0], p[1])
		if seen[n] {
			t.Fatalf("duplicate container name %q", n)
		}
		seen[n] = true
	}
}

// checkEscaped holds for every escaped name: safe characters only, bounded
// length, and never a path that leaves its parent.
func checkEscaped(t *testing.T, name, e string) {
	t.Helper()
	if e == "" || len(e) > maxEscaped {
		t.Fatalf("Escape(%q) = %q: length %d", name, e, len(e))
	}
	for i := 0; i < len(e); i++ {
		c := e[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			t.Fatalf("Escape(%q) = %q holds %q", name, e, c)
		}
	}
	root := "/srv/homes"
	if p := filepath.Join(root, e); filepath.Dir(p) != root {
		t.Fatalf("Escape(%q) = %q leaves the root: %s", name, e, p)
	}
}

func FuzzEscape(f *testing.F) {
	for _, s := range []string{"alice", "Alice.Smith@example.org", "../..", "/etc/passwd", "a-2d", strings.Repeat("é", 100), "x\x00y"} {
		f.Add(s, s+"x")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		if a == "" {
			return
		}
		ea := Escape(a)
		checkEscaped(t, a, ea)
		if Escape(a) != ea {
			t.Fatal("Escape is not stable")
		}
		if a != b && b != "" && Escape(b) == ea {
			t.Fatalf("%q and %q both escape to %q", a, b, ea)
		}
	})
}

func TestValidateUser(t *testing.T) {
	cases := []struct {
		name string
		ok   bool
	}{
		{"alice", true},
		{"Alice.Smith@example.org", true},
		{"ünïcødé", true},
		{"a/b", true},
		{"", false},
		{strings.Repeat("a", 255), true},
		{strings.Repeat("a", 256), false},
		{"a\x00b", false},
		{"a\tb", false},
		{"a\u0085b", false},
		{"\xff", false},
	}
	for _, tc := range cases {
		err := ValidateUser(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateUser(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

// FuzzHomePath creates homes for arbitrary names in a scratch homes_root:
// each is a new directory directly under the root, never outside it, and a
// second name never lands in the first one's home.
func FuzzHomePath(f *testing.F) {
	for _, s := range []string{"alice", "..", ".", "../../etc", "/abs/path", "a/b", "x\x00", "Alice", "-2e-2e"} {
		f.Add(s, "alice")
	}
	f.Fuzz(func(t *testing.T, name, other string) {
		if ValidateUser(name) != nil || ValidateUser(other) != nil {
			return
		}
		root := t.TempDir()
		homes, err := NewHomes(root)
		if err != nil {
			t.Fatal(err)
		}
		p, err := homes.Ensure(name, os.Getuid(), os.Getgid())
		if err != nil {
			t.Fatalf("Ensure(%q): %v", name, err)
		}
		if filepath.Dir(p) != root {
			t.Fatalf("home of %q at %s is not directly under %s", name, p, root)
		}
		if fi, err := os.Lstat(p); err != nil || !fi.IsDir() {
			t.Fatalf("home of %q is not a directory: %v", name, err)
		}
		q, err := homes.Ensure(other, os.Getuid(), os.Getgid())
		if err != nil {
			t.Fatalf("Ensure(%q): %v", other, err)
		}
		if (p == q) != (name == other) {
			t.Fatalf("%q and %q: homes %s and %s", name, other, p, q)
		}
	})
}
