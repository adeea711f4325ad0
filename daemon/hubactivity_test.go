package daemon

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestHubActivity reads JupyterHub's paginated user list as the hub sends
// it (two pages), per server where the token may read servers, the user's
// own activity otherwise; a refused token is an error that names the scopes.
func TestHubActivity(t *testing.T) {
	pages := map[string]string{
		"0": `{"items": [{"name": "ann", "last_activity": "2026-11-22T10:00:00Z", "servers": {"": {"last_activity": "2026-11-22T09:00:00Z"}, "gpu": {"last_activity": "2026-11-22T08:00:00Z"}}}],
		       "_pagination": {"offset": 0, "limit": 1, "total": 2, "next": {"offset": 1, "limit": 1, "url": "x"}}}`,
		"1": `{"items": [{"name": "bob", "last_activity": "2026-11-22T07:00:00Z"}], "_pagination": {"offset": 1, "limit": 1, "total": 2, "next": null}}`,
	}
	var auth []string
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth = append(auth, r.Header.Get("Authorization"))
		if r.URL.Path != "/hub/api/users" || r.URL.Query().Get("state") != "active" || r.Header.Get("Accept") != "application/jupyterhub-pagination+json" {
			http.Error(w, "bad request "+r.URL.String(), 400)
			return
		}
		if r.Header.Get("Authorization") != "token activity-token-0123456789" {
			http.Error(w, `{"status": 403}`, 403)
			return
		}
		w.Write([]byte(pages[r.URL.Query().Get("offset")]))
	}))
	defer ts.Close()
	h := &hubActivity{url: ts.URL + "/hub/api/", token: "activity-token-0123456789"}
	got, err := h.Activity(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	at := func(s string) time.Time { v, _ := time.Parse(time.RFC3339, s); return v }
	want := map[string]time.Time{"ann/": at("2026-11-22T09:00:00Z"), "ann/gpu": at("2026-11-22T08:00:00Z"), "bob/": at("2026-11-22T07:00:00Z")}
	if len(got) != len(want) {
		t.Fatalf("activity %v; want %v", got, want)
	}
	for k, v := range want {
		if !got[k].Equal(v) {
			t.Errorf("%s: %v; want %v", k, got[k], v)
		}
	}
	if len(auth) != 2 {
		t.Errorf("%d requests; want one per page", len(auth))
	}
	bad := &hubActivity{url: ts.URL + "/hub/api", token: "wrong-token-0123456789"}
	if _, err := bad.Activity(context.Background()); err == nil || !strings.Contains(err.Error(), "read:users:activity") {
		t.Errorf("a refused token: %v; want an error naming the scopes", err)
	}
}
