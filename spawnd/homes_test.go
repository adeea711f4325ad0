package spawnd

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPlantedSymlinks plants symlinks where a home would be, and inside a
// home, and checks that no home operation follows one out of homes_root:
// Ensure refuses a home that is a symlink (to a directory, a file, nowhere),
// and Delete removes a home holding symlinks to outside without touching
// what they point at.
func TestPlantedSymlinks(t *testing.T) {
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret.txt")
	if err := os.WriteFile(secret, []byte("not yours\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		target string // what the planted home symlink points at
	}{
		{"home is a symlink to a directory outside", outside},
		{"home is a symlink to a file outside", secret},
		{"home is a dangling symlink", filepath.Join(outside, "gone")},
		{"home is a symlink to another home", "../" + Escape("victim")},
		{"home is a symlink to the root", "/"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			if err := os.Chmod(root, 0o755); err != nil {
				t.Fatal(err)
			}
			h, _ := NewHomes(root)
			if _, err := h.Ensure("victim", os.Getuid(), os.Getgid()); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(tc.target, filepath.Join(root, Escape("mallory"))); err != nil {
				t.Fatal(err)
			}
			_, err := h.Ensure("mallory", os.Getuid(), os.Getgid())
			if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "is a symlink") {
				// The symlink is named as such: the admin is told what to
				// replace (a "not a directory" would send them looking for a file).
				t.Fatalf("Ensure over a planted symlink: %v, want a conflict that says the home is a symlink", err)
			}
			if fi, err := os.Lstat(filepath.Join(root, Escape("mallory"))); err != nil || fi.Mode()&os.ModeSymlink == 0 {
				t.Fatalf("the planted symlink was replaced or followed: %v", err)
			}
			if b, err := os.ReadFile(secret); err != nil || string(b) != "not yours\n" {
				t.Fatalf("the file outside changed: %q %v", b, err)
			}
			// Deleting the planted home removes the link, never what it points at.
			if err := h.Delete("mallory"); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(secret); err != nil {
				t.Fatalf("deleting a symlinked home reached outside: %v", err)
			}
			if ok, _ := h.Exists("victim"); !ok {
				t.Fatal("deleting a symlinked home removed the home it pointed at")
			}
		})
	}

	t.Run("a home holding symlinks to outside", func(t *testing.T) {
		root := t.TempDir()
		_ = os.Chmod(root, 0o755)
		h, _ := NewHomes(root)
		p, err := h.Ensure("nina", os.Getuid(), os.Getgid())
		if err != nil {
			t.Fatal(err)
		}
		for name, target := range map[string]string{"out": outside, "file": secret, "up": "..", "root": "/"} {
			if err := os.Symlink(target, filepath.Join(p, name)); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.MkdirAll(filepath.Join(p, "deep", "er"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(outside, filepath.Join(p, "deep", "er", "link")); err != nil {
			t.Fatal(err)
		}
		// An existing home is left as it is, links and all.
		if q, err := h.Ensure("nina", os.Getuid(), os.Getgid()); err != nil || q != p {
			t.Fatalf("Ensure of an existing home with links inside: %s %v", q, err)
		}
		if err := h.Delete("nina"); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("the home is still there: %v", err)
		}
		if b, err := os.ReadFile(secret); err != nil || string(b) != "not yours\n" {
			t.Fatalf("deleting a home followed a link out: %q %v", b, err)
		}
		if _, err := os.Stat(root); err != nil {
			t.Fatalf("deleting a home took homes_root with it: %v", err)
		}
	})
}
