package images

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/labels"
)

func testLock(pipVersion string) *envs.Lock {
	l := &envs.Lock{
		Env: "team", SpecChecksum: "sha256:spec", Created: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC),
		Base:    envs.Base{Ref: "spawnd/debian:bookworm", Digest: "sha256:" + strings.Repeat("0", 64)},
		Apt:     []envs.AptPackage{{Name: "git", Version: "1:2.39.5-0+deb12u2", Arch: "amd64", SHA256: strings.Repeat("1", 64)}},
		Pip:     &envs.PipLock{IndexURL: "http://127.0.0.1:9/simple", Packages: []envs.PipPackage{{Name: "requests", Version: pipVersion, SHA256: strings.Repeat("2", 64), File: "requests-" + pipVersion + "-py3-none-any.whl"}}},
		Kernels: []envs.Kernel{{Name: "team", DisplayName: "Team (Python 3)", Python: "/usr/bin/python3"}},
		Cmd:     []string{"jupyterhub-singleuser"},
		User:    envs.User{Name: "jovyan", UID: 1000, GID: 100},
	}
	l.Seal()
	return l
}

func TestPlanLayerOrder(t *testing.T) {
	df := NewBuildPlan(testLock("2.32.3"), StageAll).Dockerfile
	order := []string{"FROM sha256:", "COPY apt/", "sha256sum --check", "COPY pip/", "--require-hashes", "COPY kernels/", "useradd", "USER 1000:100", `CMD ["jupyterhub-singleuser"]`}
	last := -1
	for _, want := range order {
		i := strings.Index(df, want)
		if i < 0 || i < last {
			t.Fatalf("%q missing or out of order in:\n%s", want, df)
		}
		last = i
	}
}

// TestPipChangeKeepsAptLayer: the Dockerfile and files up to and including
// the apt layer are byte-identical when only a pip package changes, so the
// engine's cache reuses the apt layer.
func TestPipChangeKeepsAptLayer(t *testing.T) {
	a, b := NewBuildPlan(testLock("2.32.3"), StageAll), NewBuildPlan(testLock("2.32.4"), StageAll)
	cut := func(df string) string { return df[strings.Index(df, "\n"):strings.Index(df, "COPY pip/")] }
	if cut(a.Dockerfile) != cut(b.Dockerfile) {
		t.Fatal("a pip change altered the layers before pip")
	}
	if !bytes.Equal(a.Files["apt/packages.txt"], b.Files["apt/packages.txt"]) || !bytes.Equal(a.Files["apt/sha256sums.txt"], b.Files["apt/sha256sums.txt"]) {
		t.Fatal("a pip change altered the apt files")
	}
	if bytes.Equal(a.Files["pip/requirements.txt"], b.Files["pip/requirements.txt"]) {
		t.Fatal("the pip change is not in the plan")
	}
	if a.Labels[labels.LockDigest] == b.Labels[labels.LockDigest] {
		t.Fatal("both plans carry the same lock digest")
	}
}

func TestPlanFiles(t *testing.T) {
	p := NewBuildPlan(testLock("2.32.3"), StageAll)
	if got := string(p.Files["apt/sha256sums.txt"]); got != strings.Repeat("1", 64)+"  git_1%3a2.39.5-0+deb12u2_amd64.deb\n" {
		t.Fatalf("apt sums: %q", got)
	}
	if got := string(p.Files["pip/requirements.txt"]); got != "requests==2.32.3 --hash=sha256:"+strings.Repeat("2", 64)+"\n" {
		t.Fatalf("requirements: %q", got)
	}
	if !strings.Contains(string(p.Files["kernels/team/kernel.json"]), `"display_name": "Team (Python 3)"`) {
		t.Fatalf("kernel.json: %s", p.Files["kernels/team/kernel.json"])
	}
	if !strings.Contains(p.Dockerfile, "--no-index --find-links /tmp/spawnd/pip") || strings.Contains(p.Dockerfile, "127.0.0.1:9") {
		t.Fatal("pip install in the build may reach an index; it must install the context's wheels only")
	}
	if p.Blobs["apt/git_1%3a2.39.5-0+deb12u2_amd64.deb"] != strings.Repeat("1", 64) || len(p.Blobs) != 2 {
		t.Fatalf("package files of the context: %v", p.Blobs)
	}
	stage := NewBuildPlan(testLock("2.32.3"), StageConda)
	if strings.Contains(stage.Dockerfile, "pip") || strings.Contains(stage.Dockerfile, "USER") {
		t.Fatalf("the lock stage goes past conda:\n%s", stage.Dockerfile)
	}
}

func TestPlanTarIsDeterministic(t *testing.T) {
	a, _ := io.ReadAll(mustTar(t, NewBuildPlan(testLock("2.32.3"), StageAll)))
	b, _ := io.ReadAll(mustTar(t, NewBuildPlan(testLock("2.32.3"), StageAll)))
	if !bytes.Equal(a, b) {
		t.Fatal("the same plan gave different build contexts")
	}
	tr := tar.NewReader(bytes.NewReader(a))
	var names []string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, h.Name)
	}
	if strings.Join(names, ",") != "Dockerfile,apt/,apt/git_1%3a2.39.5-0+deb12u2_amd64.deb,apt/sha256sums.txt,jupyter/,jupyter/jupyter_server_config.json,kernels/,kernels/team/,kernels/team/kernel.json,pip/,pip/requests-2.32.3-py3-none-any.whl,pip/requirements.txt" {
		t.Fatalf("context: %v", names)
	}
	// A package file the cache does not hold: no context, an error naming it.
	if _, err := NewBuildPlan(testLock("2.32.3"), StageAll).Tar(Cache{Dir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "git_1%3a2.39.5-0+deb12u2_amd64.deb") {
		t.Fatalf("context without the package files: %v", err)
	}
}

func TestParseAptLock(t *testing.T) {
	b, _ := os.ReadFile("testdata/apt-lock.txt")
	pkgs, err := parseAptLock(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(pkgs) != 2 || pkgs[0].Name != "git" || pkgs[0].Version != "1:2.39.5-0+deb12u2" || pkgs[0].SHA256 != strings.Repeat("1", 64) || pkgs[0].Size != 7264796 {
		t.Fatalf("parsed %+v", pkgs)
	}
	if AptFile(pkgs[0]) != "git_1%3a2.39.5-0+deb12u2_amd64.deb" {
		t.Fatalf("apt file %s", AptFile(pkgs[0]))
	}
	broken := bytes.Replace(b, []byte("SHA256: 0dd9"), []byte("SHA1: 0dd9"), 1)
	if _, err := parseAptLock(broken); err == nil {
		t.Fatal("a package without SHA256 was locked")
	}
}

func TestParsePipReport(t *testing.T) {
	b, _ := os.ReadFile("testdata/pip-report.json")
	pkgs, err := parsePipReport(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(pkgs) != 2 || pkgs[0].Name != "requests" || pkgs[1].Name != "charset-normalizer" || pkgs[1].File != "charset_normalizer-3.3.2-py3-none-any.whl" {
		t.Fatalf("parsed %+v", pkgs)
	}
	if _, err := parsePipReport([]byte(`{"version":"1","install":[{"download_info":{"url":"file:///src","dir_info":{}},"metadata":{"name":"x","version":"1"}}]}`)); err == nil {
		t.Fatal("a local directory install was locked")
	}
	_, err = parsePipReport([]byte(`{"version":"1","install":[{"download_info":{"url":"https://x/y-1-py3-none-any.whl","archive_info":{"hashes":{"sha256":"` +
		strings.Repeat("a", 64) + `"}}},"is_yanked":true,"metadata":{"name":"y","version":"1"}}]}`))
	if err == nil || !strings.Contains(err.Error(), "y 1 is a release its index has yanked") {
		t.Fatalf("a yanked release: %v", err)
	}
}

// TestCondaPlan: a lock with conda packages copies the installed tree to
// /opt/conda before pip, pip uses conda's Python when the lock has one, and
// the context carries the tree with fixed owners, modes and times and its
// symlinks as symlinks. The tree's key follows the packages' hashes.
func TestCondaPlan(t *testing.T) {
	l := testLock("1")
	l.Conda = &envs.CondaLock{Channels: []string{"conda-forge"}, Platform: "linux-64", Packages: []envs.CondaPackage{
		{Name: "python", Version: "3.12.1", URL: "https://conda.example/linux-64/python-3.12.1-0.conda", SHA256: strings.Repeat("a", 64)},
		{Name: "tzdata", Version: "2024a", URL: "https://conda.example/noarch/tzdata-2024a-0.conda", SHA256: strings.Repeat("b", 64)},
	}}
	p := NewBuildPlan(l, StageAll)
	if !strings.Contains(p.Dockerfile, "COPY conda/ /opt/conda/\n") || !strings.Contains(p.Dockerfile, "/opt/conda/bin/python -m pip") ||
		strings.Index(p.Dockerfile, "COPY conda/") > strings.Index(p.Dockerfile, "COPY pip/") {
		t.Fatalf("conda layer missing, or after pip, or pip not in conda's Python:\n%s", p.Dockerfile)
	}
	key := CondaTreeKey(l)
	if p.Trees["conda"] != key {
		t.Fatalf("plan trees %v, want conda=%s", p.Trees, key)
	}
	l2 := *l
	c2 := *l.Conda
	c2.Packages = append([]envs.CondaPackage(nil), l.Conda.Packages...)
	c2.Packages[1].SHA256 = strings.Repeat("c", 64)
	l2.Conda = &c2
	if CondaTreeKey(&l2) == key {
		t.Fatal("another package hash gives the same tree key")
	}

	c := Cache{Dir: t.TempDir()}
	tree := c.TreePath(key)
	for name, mode := range map[string]os.FileMode{"bin/python3.12": 0o700, "conda-meta/history": 0o600, "lib/x.py": 0o664} {
		if err := os.MkdirAll(filepath.Join(tree, filepath.Dir(name)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tree, name), []byte(name), mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("python3.12", filepath.Join(tree, "bin/python")); err != nil {
		t.Fatal(err)
	}
	for name, sum := range p.Blobs {
		if err := os.MkdirAll(filepath.Dir(c.Path(sum)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(c.Path(sum), []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r, err := p.Tar(c)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(h.Name, "conda/") {
			continue
		}
		if h.Uid != 0 || h.Gid != 0 || h.ModTime.Unix() != 0 {
			t.Errorf("%s: owner %d:%d time %v", h.Name, h.Uid, h.Gid, h.ModTime)
		}
		got[h.Name] = fmt.Sprintf("%c %o %s", h.Typeflag, h.Mode, h.Linkname)
	}
	want := map[string]string{
		"conda/":                   "5 755 ",
		"conda/bin/":               "5 755 ",
		"conda/bin/python":         "2 777 python3.12",
		"conda/bin/python3.12":     "0 755 ",
		"conda/conda-meta/":        "5 755 ",
		"conda/conda-meta/history": "0 644 ",
		"conda/lib/":               "5 755 ",
		"conda/lib/x.py":           "0 644 ",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("context's conda tree:\n got %v\nwant %v", got, want)
	}
	if err := os.RemoveAll(tree); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Tar(c); err == nil || !strings.Contains(err.Error(), "installed tree") {
		t.Fatalf("a context whose tree is not in the cache: %v", err)
	}
}

// mustTar writes a plan's context from a cache holding a stand-in file for
// each of its package files.
func mustTar(t *testing.T, p BuildPlan) io.Reader {
	t.Helper()
	c := Cache{Dir: t.TempDir()}
	for name, sum := range p.Blobs {
		if err := os.MkdirAll(filepath.Dir(c.Path(sum)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(c.Path(sum), []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r, err := p.Tar(c)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestPackageDifferences(t *testing.T) {
	for _, c := range []struct {
		lock, here, want []string
	}{
		{[]string{"a=1", "b=2"}, []string{"a=1", "b=2"}, nil},
		{[]string{"a=1", "b=2"}, []string{"a=1", "b=3"}, []string{"b: lock 2, here 3"}},
		{[]string{"a=1"}, []string{"a=1", "c=1:4"}, []string{"c: lock none, here 1:4"}},
		{[]string{"a=1", "d=5"}, []string{"a=2"}, []string{"a: lock 1, here 2", "d: lock 5, here none"}},
	} {
		if got := packageDifferences(c.lock, c.here); strings.Join(got, "|") != strings.Join(c.want, "|") {
			t.Errorf("packageDifferences(%v, %v) = %v, want %v", c.lock, c.here, got, c.want)
		}
	}
	err := &BaseMismatchError{Ref: "spawnd/debian:bookworm", Want: "sha256:aa", Have: "sha256:bb", Differences: []string{"libc6: lock 2.36-9+deb12u10, here 2.36-9+deb12u13"}}
	for _, want := range []string{"sha256:aa", "sha256:bb", "libc6: lock 2.36-9+deb12u10, here 2.36-9+deb12u13", "--from-bundle", "--relock"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q: %v", want, err)
		}
	}
}

// TestPlanShowsWhatTheSpecNames: an image lists exactly the spec's kernels
// (ipykernel's native python3 hidden), and an image with JupyterLab carries
// the overrides that turn its news prompt and update check off, under the
// prefix JupyterLab's application directory is in (issue #31).
func TestPlanShowsWhatTheSpecNames(t *testing.T) {
	pipLab := func(l *envs.Lock) {
		l.Pip.Packages = append(l.Pip.Packages, envs.PipPackage{Name: "jupyterlab", Version: "4.6.6", SHA256: strings.Repeat("3", 64), File: "jupyterlab-4.6.6-py3-none-any.whl"})
	}
	condaLab := func(l *envs.Lock) {
		l.Conda = &envs.CondaLock{Channels: []string{"conda-forge"}, Packages: []envs.CondaPackage{{Name: "python", Version: "3.12.7"}, {Name: "jupyterlab", Version: "4.6.6"}}}
	}
	for _, tc := range []struct {
		name      string
		change    func(*envs.Lock)
		allowList string // the kernels the server may list; "" = no allow-list
		labCopy   string // where the overrides go; "" = none
	}{
		{"no JupyterLab", func(*envs.Lock) {}, `"team"`, ""},
		{"JupyterLab from pip", pipLab, `"team"`, "COPY lab/ /usr/local/share/jupyter/lab/settings/overrides.d/"},
		{"JupyterLab from conda", condaLab, `"team"`, "COPY lab/ /opt/conda/share/jupyter/lab/settings/overrides.d/"},
		{"JupyterLab from pip into conda's Python", func(l *envs.Lock) {
			pipLab(l)
			l.Conda = &envs.CondaLock{Packages: []envs.CondaPackage{{Name: "python", Version: "3.12.7"}}}
		}, `"team"`, "COPY lab/ /opt/conda/share/jupyter/lab/settings/overrides.d/"},
		{"two kernels, sorted", func(l *envs.Lock) {
			l.Kernels = append(l.Kernels, envs.Kernel{Name: "python3", DisplayName: "Python 3", Python: "/usr/bin/python3"})
		}, `"python3",` + "\n      " + `"team"`, ""},
		{"no kernels named: nothing hidden", func(l *envs.Lock) { l.Kernels = nil }, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := testLock("2.32.3")
			tc.change(l)
			l.Seal()
			p := NewBuildPlan(l, StageAll)
			conf, ok := p.Files["jupyter/jupyter_server_config.json"]
			if tc.allowList == "" {
				if ok || strings.Contains(p.Dockerfile, "COPY jupyter/") {
					t.Fatalf("a spec naming no kernels got an allow-list:\n%s", conf)
				}
			} else if !strings.Contains(string(conf), `"allowed_kernelspecs": [`+"\n      "+tc.allowList+"\n    ]") || !strings.Contains(string(conf), `"ensure_native_kernel": false`) ||
				!strings.Contains(p.Dockerfile, "COPY jupyter/ /etc/jupyter/\n") {
				t.Fatalf("the kernel allow-list:\n%s\n%s", conf, p.Dockerfile)
			}
			lab, ok := p.Files["lab/10-spawnd.json"]
			if tc.labCopy == "" {
				if ok || strings.Contains(p.Dockerfile, "COPY lab/") {
					t.Fatalf("an image without JupyterLab got its overrides:\n%s", p.Dockerfile)
				}
				return
			}
			if !strings.Contains(p.Dockerfile, tc.labCopy) {
				t.Fatalf("want %q in:\n%s", tc.labCopy, p.Dockerfile)
			}
			var o map[string]map[string]any
			if err := json.Unmarshal(lab, &o); err != nil {
				t.Fatal(err)
			}
			n := o["@jupyterlab/apputils-extension:notification"]
			if n["fetchNews"] != "false" || n["checkForUpdates"] != false {
				t.Fatalf("JupyterLab's overrides: %s", lab)
			}
			if p.Labels[labels.Plan] != PlanVersion {
				t.Fatalf("the image's plan label: %q", p.Labels[labels.Plan])
			}
		})
	}
}

// TestEnvSettingsAreCheckedAgainstTheImagesJupyterLab: the env's settings
// go in after spawnd's; the plan's check (run here by /bin/sh on a
// JupyterLab tree of schemas) passes for a core plugin and one of a
// prebuilt extension, and fails naming a plugin the tree lacks, which
// settingsError turns into the spec's line and field.
func TestEnvSettingsAreCheckedAgainstTheImagesJupyterLab(t *testing.T) {
	lockWith := func(ids ...string) *envs.Lock {
		l := testLock("2.32.3")
		l.Pip.Packages = append(l.Pip.Packages, envs.PipPackage{Name: "jupyterlab", Version: "4.6.6", SHA256: strings.Repeat("3", 64), File: "jupyterlab-4.6.6-py3-none-any.whl"})
		l.Settings = map[string]map[string]any{}
		for _, id := range ids {
			l.Settings[id] = map[string]any{"x": true}
		}
		l.Seal()
		return l
	}
	p := NewBuildPlan(lockWith("@jupyterlab/notebook-extension:tracker"), StageAll)
	if !strings.Contains(string(p.Files["lab/50-env.json"]), `"@jupyterlab/notebook-extension:tracker": {`) || p.Files["lab/10-spawnd.json"] == nil {
		t.Fatalf("the env's overrides: %s", p.Files["lab/50-env.json"])
	}
	if NewBuildPlan(testLock("2.32.3"), StageAll).Files["lab/50-env.json"] != nil {
		t.Fatal("an env without settings got an overrides file")
	}

	// A JupyterLab tree: one core schema, one prebuilt extension's.
	tree := t.TempDir()
	for _, f := range []string{"lab/schemas/@jupyterlab/notebook-extension/tracker.json", "labextensions/jupyterlab-git/schemas/jupyterlab-git/plugin.json"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(tree, f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tree, f), []byte("{}"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	check := func(l *envs.Lock) (string, error) {
		df := NewBuildPlan(l, StageAll).Dockerfile
		i := strings.Index(df, "RUN for id in ")
		if i < 0 {
			t.Fatalf("no plugin check in:\n%s", df)
		}
		run := df[i+len("RUN ") : i+strings.Index(df[i:], "done\n")+len("done")]
		run = strings.ReplaceAll(run, "/usr/local/share/jupyter", tree)
		out, err := exec.Command("/bin/sh", "-eu", "-c", strings.ReplaceAll(run, "\\\n", "\n")).CombinedOutput()
		return string(out), err
	}
	if out, err := check(lockWith("@jupyterlab/notebook-extension:tracker", "jupyterlab-git:plugin")); err != nil {
		t.Fatalf("known plugins refused: %v %s", err, out)
	}
	out, err := check(lockWith("@jupyterlab/notebook-extension:tracker", "@jupyterlab/notebok-extension:tracker"))
	if err == nil || !strings.Contains(out, unknownPluginMark+"@jupyterlab/notebok-extension:tracker") {
		t.Fatalf("a misspelt plugin: %v %q; want the check to fail naming it", err, out)
	}

	spec := filepath.Join(t.TempDir(), "team.yaml")
	body := "name: team\nbase: debian:bookworm-slim\npip:\n  packages: [jupyterlab]\njupyter:\n  settings:\n    \"@jupyterlab/notebok-extension:tracker\": {recordTiming: true}\n"
	if err := os.WriteFile(spec, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	// What the engine streams: the step echoed (the marker inside its
	// script), then the check's own line.
	df := NewBuildPlan(lockWith("@jupyterlab/notebok-extension:tracker"), StageAll).Dockerfile
	runStep := df[strings.Index(df, "RUN for id"):]
	runStep = strings.ReplaceAll(runStep[:strings.Index(runStep, "done\n")+len("done")], "\\\n", "")
	if !strings.Contains(runStep, unknownPluginMark) {
		t.Fatalf("the echoed step does not hold the marker, so this case tests nothing: %s", runStep)
	}
	serr := settingsError(spec, []string{"Step 9/12 : " + runStep, strings.TrimSpace(out)})
	want := spec + `:7:5: jupyter.settings["@jupyterlab/notebok-extension:tracker"]: the image's JupyterLab has no plugin`
	if serr == nil || !strings.HasPrefix(serr.Error(), want) || !strings.Contains(serr.Error(), "no image was built") {
		t.Fatalf("the build's error: %v; want it to begin %q", serr, want)
	}
	if settingsError(spec, []string{"E: Unable to locate package"}) != nil {
		t.Fatal("another build failure was read as a settings error")
	}

	// Settings in an env with no JupyterLab: refused when locking.
	s, err := envs.Parse(spec, []byte(strings.Replace(body, "[jupyterlab]", "[requests]", 1)))
	if err != nil {
		t.Fatal(err)
	}
	l := testLock("2.32.3")
	l.Settings = s.Jupyter.Settings
	if err := settingsHaveALab(s, l); err == nil || !strings.HasPrefix(err.Error(), spec+":6:3: jupyter.settings: the env installs no JupyterLab") {
		t.Fatalf("settings without JupyterLab: %v", err)
	}
}
