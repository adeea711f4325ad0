package envs

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files")

const minimal = `name: team
base: debian:bookworm-slim
apt: [git, curl]
pip:
  packages: ["requests>=2.31"]
jupyter:
  kernels: [{name: team, display_name: "Team"}]
`

func TestParseFillsDefaults(t *testing.T) {
	s, err := Parse("team.yaml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if s.User == nil || s.User.Name != "jovyan" || s.User.UID != 1000 || s.User.GID != 100 {
		t.Fatalf("user default: %+v", s.User)
	}
	if got := strings.Join(s.Jupyter.Cmd, " "); got != "jupyterhub-singleuser" {
		t.Fatalf("cmd default %q", got)
	}
	if s.Jupyter.Kernels[0].Python != "/usr/bin/python3" {
		t.Fatalf("kernel python default %q", s.Jupyter.Kernels[0].Python)
	}
	if p := s.PosOf("apt[1]"); p.Line != 3 || p.Column != 12 {
		t.Fatalf("position of apt[1]: %v", p)
	}
}

func TestParseErrorsNamePlaceAndField(t *testing.T) {
	cases := []struct {
		name, body, want string
	}{
		{"unknown top field", minimal + "image: x\n", "team.yaml:8:1: image: unknown field"},
		{"unknown nested field", strings.Replace(minimal, "  packages:", "  pakages:", 1), "team.yaml:5:3: pip.pakages: unknown field"},
		{"wrong kind", strings.Replace(minimal, "apt: [git, curl]", "apt: git", 1), "team.yaml:3:6: apt: must be a list"},
		{"uid not a number", minimal + "user: {name: a, uid: many, gid: 1}\n", "team.yaml:8:22: user.uid: must be a whole number"},
		{"root", minimal + "user: {name: a, uid: 0, gid: 0}\n", "user.uid: 0; servers never run as root"},
		{"bad apt name", strings.Replace(minimal, "curl", "Curl!", 1), "team.yaml:3:12: apt[1]: \"Curl!\" is not a Debian package name"},
		{"pip option", strings.Replace(minimal, `"requests>=2.31"`, `"--index-url=http://evil"`, 1), "team.yaml:5:14: pip.packages[0]"},
		{"missing base", strings.Replace(minimal, "base: debian:bookworm-slim\n", "", 1), "base: missing"},
		{"bad yaml", minimal + "apt: [\n", "team.yaml:8:1: invalid YAML"},
		{"duplicate key", minimal + "name: other\n", "name: given twice"},
		{"empty", "", "the file is empty"},
		{"two documents", minimal + "---\nname: x\n", "a second YAML document"},
		{"duplicate kernel", strings.Replace(minimal, `[{name: team, display_name: "Team"}]`, `[{name: a}, {name: a}]`, 1), "jupyter.kernels[1].name"},
		{"settings not a mapping", minimal + "  settings: [a]\n", "team.yaml:8:13: jupyter.settings: must be a mapping"},
		{"settings of a plugin not a mapping", minimal + "  settings:\n    \"@jupyterlab/notebook-extension:tracker\": 3\n", `team.yaml:9:47: jupyter.settings["@jupyterlab/notebook-extension:tracker"]: must be a mapping`},
		{"settings not JSON: a timestamp", minimal + "  settings:\n    \"@jupyterlab/a-extension:b\": {since: 2026-01-01}\n", `team.yaml:9:42: jupyter.settings["@jupyterlab/a-extension:b"].since: not valid JSON: "2026-01-01" reads as YAML timestamp; quote it`},
		{"settings not JSON: NaN", minimal + "  settings:\n    \"@jupyterlab/a-extension:b\": {x: [1, .nan]}\n", `jupyter.settings["@jupyterlab/a-extension:b"].x[1]: not valid JSON: .nan is not a JSON number`},
		{"settings not JSON: a number as a key", minimal + "  settings:\n    \"@jupyterlab/a-extension:b\": {1: on}\n", `jupyter.settings["@jupyterlab/a-extension:b"].1: not valid JSON: a key must be a string`},
		{"settings given twice", minimal + "  settings:\n    a:b: {}\n    a:b: {}\n", `team.yaml:10:5: jupyter.settings["a:b"]: given twice`},
		{"not a plugin ID", minimal + "  settings:\n    \"notebook; rm -rf /\": {}\n", `team.yaml:9:5: jupyter.settings["notebook; rm -rf /"]: "notebook; rm -rf /" is not a JupyterLab plugin ID`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("team.yaml", []byte(tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestChecksumIgnoresFormattingOnly(t *testing.T) {
	a, err := Parse("a.yaml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	reformatted := "# a comment\n" + strings.Replace(minimal, "apt: [git, curl]", "apt:\n  - git   # vcs\n  - curl", 1)
	b, err := Parse("b.yaml", []byte(reformatted))
	if err != nil {
		t.Fatal(err)
	}
	if a.Checksum() != b.Checksum() {
		t.Fatal("a comment or reflow changed the checksum")
	}
	c, _ := Parse("c.yaml", []byte(strings.Replace(minimal, "curl", "wget", 1)))
	if c.Checksum() == a.Checksum() {
		t.Fatal("a package change kept the checksum")
	}
}

func sampleLock() *Lock {
	l := &Lock{
		Env: "team", SpecChecksum: "sha256:spec", Created: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC),
		Base: Base{Ref: "debian:bookworm", Digest: "sha256:base"},
		Apt: []AptPackage{{Name: "zlib1g", Version: "1:1.2.13", Arch: "amd64", SHA256: strings.Repeat("a", 64)},
			{Name: "git", Version: "1:2.39.5", Arch: "amd64", SHA256: strings.Repeat("b", 64)}},
		Pip:  &PipLock{Packages: []PipPackage{{Name: "requests", Version: "2.32.3", SHA256: strings.Repeat("c", 64)}}},
		Cmd:  []string{"jupyterhub-singleuser"},
		User: User{Name: "jovyan", UID: 1000, GID: 100},
	}
	l.Seal()
	return l
}

func TestLockRoundTripIsStable(t *testing.T) {
	l := sampleLock()
	if l.Apt[0].Name != "git" {
		t.Fatal("Seal did not sort apt packages")
	}
	b := l.Marshal()
	golden := filepath.Join("testdata", "sample.lock.json")
	if *update {
		_ = os.MkdirAll("testdata", 0o755)
		_ = os.WriteFile(golden, b, 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("lock bytes changed; rerun with -update if intended:\n%s", b)
	}
	back, err := ParseLock("x", b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back.Marshal(), b) {
		t.Fatal("round trip changed the lock")
	}
	if l.Tag() != "spawnd/team:"+strings.TrimPrefix(l.Digest, "sha256:")[:12] {
		t.Fatalf("tag %s", l.Tag())
	}
}

func TestTamperedLockRefused(t *testing.T) {
	b := sampleLock().Marshal()
	edited := bytes.Replace(b, []byte(`"2.32.3"`), []byte(`"2.32.4"`), 1)
	_, err := ParseLock("team.lock.json", edited)
	if !errors.Is(err, ErrLockTampered) {
		t.Fatalf("edited lock: %v", err)
	}
	if _, err := ParseLock("x", []byte(`{"lock_version":1,"surprise":true}`)); err == nil {
		t.Fatal("unknown field accepted")
	}
}

func TestLockPath(t *testing.T) {
	if got := LockPath("envs/team.yaml"); got != "envs/team.lock.json" {
		t.Fatal(got)
	}
}

// TestSchemaUpToDate regenerates the JSON Schema from the types and their
// field comments, and compares it with envs/spec.schema.json.
func TestSchemaUpToDate(t *testing.T) {
	docs := fieldDocs(t, "spec.go")
	got := Schema(docs)
	if *update {
		_ = os.WriteFile("spec.schema.json", got, 0o644)
	}
	want, err := os.ReadFile("spec.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("envs/spec.schema.json is out of date; run: go test ./envs -run Schema -update")
	}
}

func fieldDocs(t *testing.T, file string) map[string]string {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, file, nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	docs := map[string]string{}
	ast.Inspect(f, func(n ast.Node) bool {
		ts, ok := n.(*ast.TypeSpec)
		if !ok {
			return true
		}
		st, ok := ts.Type.(*ast.StructType)
		if !ok {
			return true
		}
		for _, fl := range st.Fields.List {
			if fl.Doc == nil || len(fl.Names) == 0 {
				continue
			}
			docs[ts.Name.Name+"."+fl.Names[0].Name] = strings.TrimSpace(strings.ReplaceAll(fl.Doc.Text(), "\n", " "))
		}
		return true
	})
	return docs
}

func FuzzParseSpec(f *testing.F) {
	f.Add([]byte(minimal))
	f.Add([]byte("name: x\nbase: y\nconda: {packages: [numpy=1.26]}\n"))
	f.Add([]byte("a: &x [1]\nb: *x\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Parse("f.yaml", b)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		if s.Name == "" || s.Base == "" || s.User == nil || s.User.UID <= 0 {
			t.Fatalf("accepted an invalid spec: %+v", s)
		}
	})
}

func FuzzParseLock(f *testing.F) {
	f.Add(sampleLock().Marshal())
	f.Add([]byte(`{"lock_version":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := ParseLock("f", b)
		if err != nil {
			return
		}
		if l.Digest != l.computeDigest() {
			t.Fatal("accepted a lock that does not match its digest")
		}
	})
}

// TestSettingsAreLockedAsJSON: a spec's JupyterLab settings reach the lock
// and survive its round trip (the digest still verifies), and change the
// spec's checksum.
func TestSettingsAreLockedAsJSON(t *testing.T) {
	body := minimal + "  settings:\n    \"@jupyterlab/notebook-extension:tracker\": {recordTiming: true, codeCellConfig: {lineNumbers: true, tabSize: 2, rulers: [80, 100], fontFamily: null}}\n"
	s, err := Parse("team.yaml", []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	plain, _ := Parse("team.yaml", []byte(minimal))
	if s.Checksum() == plain.Checksum() {
		t.Fatal("settings did not change the spec's checksum")
	}
	if p := s.PosOf(SettingsField("@jupyterlab/notebook-extension:tracker")); p.Line != 9 || p.Column != 5 {
		t.Fatalf("position of the plugin's settings: %v", p)
	}
	l := sampleLock()
	l.Settings = s.Jupyter.Settings
	l.Seal()
	path := filepath.Join(t.TempDir(), "team.lock.json")
	if err := WriteLock(path, l); err != nil {
		t.Fatal(err)
	}
	back, err := ReadLock(path)
	if err != nil {
		t.Fatalf("a lock with settings did not read back: %v", err)
	}
	if back.Digest != l.Digest {
		t.Fatalf("digest %s after the round trip, %s before", back.Digest, l.Digest)
	}
	got, _ := json.Marshal(back.Settings)
	if want := `{"@jupyterlab/notebook-extension:tracker":{"codeCellConfig":{"fontFamily":null,"lineNumbers":true,"rulers":[80,100],"tabSize":2},"recordTiming":true}}`; string(got) != want {
		t.Fatalf("settings in the lock: %s; want %s", got, want)
	}
}
