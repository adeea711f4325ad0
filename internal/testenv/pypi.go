package testenv

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"html"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
)

// Index is a PEP 503 simple index on 127.0.0.1 serving wheels the test
// makes, since no public index can be reached here.
type Index struct {
	URL    string // the /simple/ URL to give pip
	mu     sync.Mutex
	files  map[string][]byte            // file name -> wheel
	links  map[string]map[string]string // project -> file -> sha256
	yanked map[string]string            // file -> reason, for yanked files
}

// NewIndex starts an index; it stops when the test ends.
func NewIndex(t testing.TB) *Index {
	t.Helper()
	ix, stop, err := StartIndex()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return ix
}

// StartIndex starts an index on 127.0.0.1 and returns it and its stop.
func StartIndex() (*Index, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	ix := &Index{files: map[string][]byte{}, links: map[string]map[string]string{}, yanked: map[string]string{}}
	srv := &http.Server{Handler: ix}
	go srv.Serve(ln)
	ix.URL = "http://" + ln.Addr().String() + "/simple"
	return ix, func() { srv.Close() }, nil
}

// Add publishes a pure-Python wheel of project at version, importable as
// module and holding VERSION; requires are its Requires-Dist lines. It
// returns the wheel's SHA-256.
func (ix *Index) Add(project, version string, requires ...string) string {
	return ix.AddTagged(project, version, "py3-none-any", requires...)
}

// AddTagged is Add for a wheel with the given compatibility tag (e.g.
// "cp311-cp311-manylinux_2_17_aarch64": a wheel for another platform).
func (ix *Index) AddTagged(project, version, tag string, requires ...string) string {
	module := strings.ReplaceAll(project, "-", "_")
	dist := fmt.Sprintf("%s-%s.dist-info", module, version)
	files := map[string]string{
		module + "/__init__.py": fmt.Sprintf("VERSION = %q\n", version),
		dist + "/METADATA":      "Metadata-Version: 2.1\nName: " + project + "\nVersion: " + version + "\n",
		dist + "/WHEEL":         "Wheel-Version: 1.0\nGenerator: spawnd-test\nRoot-Is-Purelib: true\nTag: " + tag + "\n",
	}
	for _, r := range requires {
		files[dist+"/METADATA"] += "Requires-Dist: " + r + "\n"
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var record strings.Builder
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, n := range names {
		w, _ := zw.Create(n)
		_, _ = w.Write([]byte(files[n]))
		sum := sha256.Sum256([]byte(files[n]))
		fmt.Fprintf(&record, "%s,sha256=%s,%d\n", n, base64.RawURLEncoding.EncodeToString(sum[:]), len(files[n]))
	}
	record.WriteString(dist + "/RECORD,,\n")
	w, _ := zw.Create(dist + "/RECORD")
	_, _ = w.Write([]byte(record.String()))
	_ = zw.Close()

	file := fmt.Sprintf("%s-%s-%s.whl", module, version, tag)
	sum := sha256.Sum256(buf.Bytes())
	hexsum := hex.EncodeToString(sum[:])
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.files[file] = buf.Bytes()
	if ix.links[project] == nil {
		ix.links[project] = map[string]string{}
	}
	ix.links[project][file] = hexsum
	return hexsum
}

// Yank marks every file of a release as yanked (PEP 592), with a reason.
func (ix *Index) Yank(project, version, reason string) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	prefix := strings.ReplaceAll(project, "-", "_") + "-" + version + "-"
	for f := range ix.links[project] {
		if strings.HasPrefix(f, prefix) {
			ix.yanked[f] = reason
		}
	}
}

// ServeHTTP serves /simple/<project>/ and /files/<wheel>.
func (ix *Index) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	switch {
	case strings.HasPrefix(r.URL.Path, "/simple/"):
		project := strings.Trim(strings.TrimPrefix(r.URL.Path, "/simple/"), "/")
		links, ok := ix.links[project]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, "<!DOCTYPE html><html><body>\n")
		for f, sum := range links {
			yank := ""
			if reason, ok := ix.yanked[f]; ok {
				yank = fmt.Sprintf(" data-yanked=\"%s\"", html.EscapeString(reason))
			}
			fmt.Fprintf(w, "<a href=\"/files/%s#sha256=%s\"%s>%s</a><br/>\n", f, sum, yank, f)
		}
		fmt.Fprintf(w, "</body></html>\n")
	case strings.HasPrefix(r.URL.Path, "/files/"):
		b, ok := ix.files[strings.TrimPrefix(r.URL.Path, "/files/")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(b)
	default:
		http.NotFound(w, r)
	}
}
