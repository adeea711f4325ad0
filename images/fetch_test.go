package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"
)

func sum(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// TestDownload: files come from the lock's URLs into the cache, checked;
// a file the server no longer has, or has with other bytes, is an error
// that names the package and leaves nothing in the cache.
func TestDownload(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/a.whl":
			_, _ = w.Write([]byte("wheel a"))
		case "/b.deb":
			_, _ = w.Write([]byte("deb b"))
		case "/changed.whl":
			_, _ = w.Write([]byte("not what was locked"))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	for _, c := range []struct {
		name string
		fs   []File
		want string // "" for success
	}{
		{"two files", []File{
			{Kind: "pip", Name: "a", Version: "1", File: "a.whl", SHA256: sum("wheel a"), URL: srv.URL + "/a.whl"},
			{Kind: "apt", Name: "b", Version: "2", File: "b.deb", SHA256: sum("deb b"), URL: srv.URL + "/b.deb"},
		}, ""},
		{"gone from the mirror", []File{{Kind: "apt", Name: "gone", Version: "1", File: "gone.deb", SHA256: sum("x"), URL: srv.URL + "/gone.deb"}},
			"apt package gone 1 (gone.deb): GET " + srv.URL + "/gone.deb: 404 Not Found; the mirror or index no longer serves it: build from a bundle"},
		{"other bytes", []File{{Kind: "pip", Name: "changed", Version: "1", File: "changed.whl", SHA256: sum("locked"), URL: srv.URL + "/changed.whl"}},
			"pip package changed 1 (changed.whl) from " + strings.TrimPrefix(srv.URL, "http://") + " has sha256 " + sum("not what was locked") + ", but the lock says " + sum("locked")},
		{"not http", []File{{Kind: "pip", Name: "f", Version: "1", File: "f.whl", SHA256: sum("f"), URL: "file:///etc/passwd"}},
			`the lock's URL "file:///etc/passwd" is not an http(s) URL`},
	} {
		t.Run(c.name, func(t *testing.T) {
			cache := Cache{Dir: t.TempDir()}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := download(ctx, c.fs, cache, &Options{}, time.Now())
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if m := cache.Missing(c.fs); len(m) != 0 {
					t.Fatalf("missing after download: %v", m)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
			if c.name == "other bytes" {
				var hm *HashMismatchError
				if !errors.As(err, &hm) {
					t.Fatalf("not a HashMismatchError: %T", err)
				}
			}
			if left, _ := os.ReadDir(cache.Dir + "/sha256"); len(left) != 0 {
				t.Fatalf("a failed download left %d files in the cache", len(left))
			}
		})
	}
}
