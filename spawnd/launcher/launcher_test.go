package launcher

import (
	"strings"
	"testing"
)

func TestParseBootCost(t *testing.T) {
	out := []byte("some noise\n" + `{"entry_point": "jupyterhub.singleuser:main", "import_cpu_seconds": 2.13, "top": [{"package": "jupyter_server", "seconds": 0.2}, {"package": "rfc3987_syntax", "seconds": 0.8}]}` + "\n")
	c, err := ParseBootCost(out)
	if err != nil {
		t.Fatal(err)
	}
	got := c.String()
	want := "2.13 CPU-s to import jupyterhub.singleuser:main and its extensions on every start; most: rfc3987_syntax 0.80 s, jupyter_server 0.20 s"
	if got != want {
		t.Fatalf("String = %q; want %q", got, want)
	}
	cold, err := ParseBootCost([]byte(`{"cold": "/bin/httpd is not a Python console script"}`))
	if err != nil || !strings.HasPrefix(cold.String(), "cannot be pre-warmed: /bin/httpd") {
		t.Fatalf("cold: %q %v", cold.String(), err)
	}
	if _, err := ParseBootCost([]byte("Traceback ...")); err == nil {
		t.Fatal("output that is not JSON parsed")
	}
}

func TestCmd(t *testing.T) {
	if got := strings.Join(Cmd("/opt/l", "/run/h", false, []string{"jupyterhub-singleuser", "--debug"}), " "); got != "/bin/sh /opt/l/launch.sh /run/h -- jupyterhub-singleuser --debug" {
		t.Fatalf("warm: %s", got)
	}
	if got := strings.Join(Cmd("/opt/l", "", true, []string{"x"}), " "); got != "/bin/sh /opt/l/launch.sh --cost -- x" {
		t.Fatalf("cost: %s", got)
	}
}
