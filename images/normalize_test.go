package images

import (
	"archive/tar"
	"bytes"
	"io"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

type entry struct {
	name, body string
	mtime      time.Time
}

func testImage(t *testing.T, built time.Time, layers ...[]entry) v1.Image {
	t.Helper()
	var adds []mutate.Addendum
	for _, es := range layers {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, e := range es {
			h := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.body)), ModTime: e.mtime, Uname: "root", Typeflag: tar.TypeReg,
				Format: tar.FormatPAX, AccessTime: e.mtime, ChangeTime: e.mtime, PAXRecords: map[string]string{"SCHILY.xattr.user.x": "1"}}
			if err := tw.WriteHeader(h); err != nil {
				t.Fatal(err)
			}
			_, _ = tw.Write([]byte(e.body))
		}
		_ = tw.Close()
		b := buf.Bytes()
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
		if err != nil {
			t.Fatal(err)
		}
		adds = append(adds, mutate.Addendum{Layer: l, History: v1.History{Created: v1.Time{Time: built}, CreatedBy: "RUN /bin/sh -eu -c pip"}})
	}
	img, err := mutate.Append(empty.Image, adds...)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.Created = v1.Time{Time: built}
	cf.Container = "abc123" + built.String()
	cf.Config.Hostname = "abc123"
	cf.Config.Image = "sha256:parent" + built.String()
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestNormalizeTwoBuilds: two images that differ only in what a build
// leaves (times, logs, shadow dates, the container) normalize to
// one digest, and the files that matter survive.
func TestNormalizeTwoBuilds(t *testing.T) {
	epoch := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	build := func(at time.Time, day string) v1.Image {
		return testImage(t, at,
			[]entry{{"usr/bin/tool", "binary", at}, {"var/log/dpkg.log", "installed at " + at.String(), at},
				{"var/cache/ldconfig/aux-cache", at.String(), at}, {"var/lib/dpkg/status-old", at.String(), at}},
			[]entry{{"etc/shadow", "root:*:" + day + ":0:99999:7:::\njovyan:!:" + day + ":0:99999:7:::\n", at}, {"home/.wh.gone", "", at},
				{"var/log/apt/history.log", at.String(), at}, {"usr/lib/python3/x.pyc", "hash-checked", at}})
	}
	a := build(time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC), "20513")
	b := build(time.Date(2026, 3, 9, 17, 30, 0, 0, time.UTC), "20521")
	if d, _ := Differences(a, b); len(d) == 0 {
		t.Fatal("the two test builds should differ before normalizing")
	}
	na, err := normalizeImage(a, epoch, t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	nb, err := normalizeImage(b, epoch, t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	ia, _ := na.ConfigName()
	ib, _ := nb.ConfigName()
	da, _ := na.Digest()
	db, _ := nb.Digest()
	if ia != ib || da != db {
		d, _ := Differences(na, nb)
		t.Fatalf("normalized: ids %s %s, digests %s %s; differences %v", ia, ib, da, db, d)
	}
	// The base's layers are kept as they are.
	kept, err := normalizeImage(a, epoch, t.TempDir(), 1)
	if err != nil {
		t.Fatal(err)
	}
	la, _ := a.Layers()
	lk, _ := kept.Layers()
	d0, _ := la[0].DiffID()
	k0, _ := lk[0].DiffID()
	d1, _ := la[1].DiffID()
	k1, _ := lk[1].DiffID()
	if d0 != k0 || d1 == k1 {
		t.Errorf("keep 1: layer 0 %s → %s (want kept), layer 1 %s → %s (want rewritten)", d0, k0, d1, k1)
	}
	files := map[string]*tar.Header{}
	bodies := map[string]string{}
	rc := mutate.Extract(na)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		files[h.Name], bodies[h.Name] = h, string(b)
	}
	for _, gone := range []string{"var/log/dpkg.log", "var/cache/ldconfig/aux-cache", "var/lib/dpkg/status-old", "var/log/apt/history.log"} {
		if _, ok := files[gone]; ok {
			t.Errorf("%s survived normalizing", gone)
		}
	}
	for _, kept := range []string{"usr/bin/tool", "etc/shadow", "usr/lib/python3/x.pyc"} {
		h, ok := files[kept]
		if !ok {
			t.Fatalf("%s was dropped", kept)
		}
		if !h.ModTime.Equal(epoch) || h.Uname != "" || h.PAXRecords["SCHILY.xattr.user.x"] != "1" {
			t.Errorf("%s: mtime %s uname %q xattrs %v", kept, h.ModTime, h.Uname, h.PAXRecords)
		}
	}
	if want := "jovyan:!:20455:"; !strings.Contains(bodies["etc/shadow"], want) {
		t.Errorf("shadow %q, want the epoch's day (%s)", bodies["etc/shadow"], want)
	}
	cf, _ := na.ConfigFile()
	if !cf.Created.Time.Equal(epoch) || cf.Container != "" || cf.Config.Hostname != "" || cf.Config.Image != "" {
		t.Errorf("config: created %s container %q hostname %q image %q", cf.Created, cf.Container, cf.Config.Hostname, cf.Config.Image)
	}
	for _, h := range cf.History {
		if strings.Contains(h.CreatedBy, "BEGIN") || !h.Created.Time.Equal(epoch) {
			t.Errorf("history %+v", h)
		}
	}
}
