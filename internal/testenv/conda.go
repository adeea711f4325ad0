package testenv

import (
	"bytes"
	"crypto/tls"
	_ "embed"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/spawnd/spawnd/internal/ci"
)

//go:embed condachannel.py
var condaChannelPy []byte

// CondaPlaceholder is the prefix placeholder of conda packages: an
// installer writes the env's prefix where a file holds it.
const CondaPlaceholder = "/opt/anaconda1anaconda2anaconda3"

// CondaPackage is a noarch package of a test channel.
type CondaPackage struct {
	Name    string               `json:"name"`
	Version string               `json:"version"`
	Depends []string             `json:"depends,omitempty"`
	Files   map[string]CondaFile `json:"files"`
}

// CondaFile is one file of a CondaPackage.
type CondaFile struct {
	Text string `json:"text"`
	Exec bool   `json:"exec,omitempty"`
}

// CondaChannel is a conda channel on 127.0.0.1 whose packages the test
// makes with conda-package-handling and indexes with py-rattler (no public
// channel can be reached here).
type CondaChannel struct {
	URL string
	Dir string
	srv *http.Server
}

// CondaPython is the Python of scripts/rattler-venv --test
// ($SPAWND_CONDA_PYTHON); without it the test is skipped, or fails in CI.
func CondaPython(t testing.TB) string {
	t.Helper()
	py := os.Getenv("SPAWND_CONDA_PYTHON")
	if py == "" {
		py = "/var/lib/spawnd-test/rattler/bin/python"
	}
	if _, err := os.Stat(py); err != nil {
		ci.Skip(t, "no Python with py-rattler at %s: run scripts/rattler-venv /var/lib/spawnd-test/rattler --test", py)
	}
	return py
}

// NewCondaChannel makes and serves a channel of pkgs over HTTP until the
// test ends.
func NewCondaChannel(t testing.TB, pkgs ...CondaPackage) *CondaChannel {
	t.Helper()
	return newCondaChannel(t, nil, pkgs)
}

// NewCondaChannelTLS is NewCondaChannel over HTTPS, with a certificate of
// ca, which no client trusts unless told to.
func NewCondaChannelTLS(t testing.TB, ca *TestCA, pkgs ...CondaPackage) *CondaChannel {
	t.Helper()
	return newCondaChannel(t, ca, pkgs)
}

func newCondaChannel(t testing.TB, ca *TestCA, pkgs []CondaPackage) *CondaChannel {
	t.Helper()
	py := CondaPython(t)
	dir := t.TempDir()
	req, _ := json.Marshal(map[string]any{"dir": dir, "packages": pkgs})
	cmd := exec.Command(py, "-I", "-c", string(condaChannelPy))
	cmd.Stdin = bytes.NewReader(req)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("making the test's conda channel: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "noarch", "repodata.json")); err != nil {
		t.Fatalf("the test's conda channel has no repodata: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	scheme := "http"
	if ca != nil {
		scheme = "https"
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{ca.Server}, MinVersion: tls.VersionTLS12})
	}
	c := &CondaChannel{URL: scheme + "://" + ln.Addr().String() + "/", Dir: dir, srv: &http.Server{Handler: http.FileServer(http.Dir(dir))}}
	go c.srv.Serve(ln)
	t.Cleanup(c.Close)
	return c
}

// File is the path of a package file of the channel.
func (c *CondaChannel) File(name string) string { return filepath.Join(c.Dir, "noarch", name) }

// Close stops serving: the channel is down.
func (c *CondaChannel) Close() { c.srv.Close() }
