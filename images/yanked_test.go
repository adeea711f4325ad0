package images

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestProjectFiles: both forms of an index's project page, PEP 691 JSON
// (PyPI's) and PEP 503 HTML with PEP 592's data-yanked, give each file's
// yanked state.
func TestProjectFiles(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/json/demo/":
			w.Header().Set("Content-Type", "application/vnd.pypi.simple.v1+json")
			_, _ = w.Write([]byte(`{"meta":{"api-version":"1.1"},"name":"demo","files":[
				{"filename":"demo-1.0-py3-none-any.whl","url":"x","hashes":{},"yanked":false},
				{"filename":"demo-1.1-py3-none-any.whl","url":"x","hashes":{},"yanked":true},
				{"filename":"demo-1.2-py3-none-any.whl","url":"x","hashes":{},"yanked":"broken build"}]}`))
		case "/html/demo/":
			w.Header().Set("Content-Type", "text/html")
			_, _ = w.Write([]byte(`<html><body>
<a href="../../files/demo-1.0-py3-none-any.whl#sha256=aa">demo-1.0-py3-none-any.whl</a>
<a data-yanked="" href="/files/demo-1.1-py3-none-any.whl#sha256=bb">demo-1.1</a>
<a href="https://files.example/demo-1.2-py3-none-any.whl#sha256=cc" data-yanked="broken &amp; bad">demo-1.2</a>
</body></html>`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	want := map[string]yankedFile{
		"demo-1.0-py3-none-any.whl": {},
		"demo-1.1-py3-none-any.whl": {yanked: true},
	}
	for _, c := range []struct{ index, reason string }{{"/json", "broken build"}, {"/html", "broken & bad"}} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		got, err := projectFiles(ctx, srv.Client(), srv.URL+c.index, "demo")
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		want["demo-1.2-py3-none-any.whl"] = yankedFile{yanked: true, reason: c.reason}
		if len(got) != len(want) {
			t.Fatalf("%s: %v, want %v", c.index, got, want)
		}
		for f, w := range want {
			if got[f] != w {
				t.Errorf("%s: %s = %+v, want %+v", c.index, f, got[f], w)
			}
		}
	}
	if _, err := projectFiles(context.Background(), srv.Client(), srv.URL+"/json", "absent"); err == nil {
		t.Error("a project the index does not have gave no error")
	}
}
