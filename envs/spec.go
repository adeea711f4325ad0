// Package envs owns what a team environment is: the spec an admin writes
// (envs/team.yaml), its strict parsing and validation with file:line:column
// errors, its checksum, the lock file that pins every package, and the lock's
// digest that names the image. It imports neither the engine client nor the
// daemon; turning a lock into an image is the images package's job.
package envs

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
)

// Spec is a team environment as an admin writes it.
type Spec struct {
	// Name of the env: lower case letters, digits, '.', '_', '-'. It names the image (spawnd/<name>).
	Name string `yaml:"name" json:"name"`
	// Description is shown in the hub's options form.
	Description string `yaml:"description,omitempty" json:"description,omitempty"`
	// Base is the base image (Debian-based); the lock pins it to an image digest.
	Base string `yaml:"base" json:"base"`
	// Apt lists Debian packages; the lock pins each to a version and SHA-256.
	Apt []string `yaml:"apt,omitempty" json:"apt,omitempty"`
	// Conda packages are solved and installed with py-rattler into /opt/conda.
	Conda *Conda `yaml:"conda,omitempty" json:"conda,omitempty"`
	// Pip installs Python packages; the lock pins each to a version and SHA-256.
	Pip *Pip `yaml:"pip,omitempty" json:"pip,omitempty"`
	// Jupyter registers kernels and sets the single-user command.
	Jupyter *Jupyter `yaml:"jupyter,omitempty" json:"jupyter,omitempty"`
	// User is the non-root user the servers run as. Default jovyan 1000:100.
	User *User `yaml:"user,omitempty" json:"user,omitempty"`

	pos positions // where each field came from
	// File is the path the spec was read from.
	File string `yaml:"-" json:"-"`
}

// Pip is the pip part of a spec.
type Pip struct {
	// IndexURL is a simple index to install from (e.g. a closer mirror). Default: pip's.
	IndexURL string `yaml:"index_url,omitempty" json:"index_url,omitempty"`
	// Packages are requirement specifiers ("requests>=2.31").
	Packages []string `yaml:"packages" json:"packages"`
}

// Conda is the conda part of a spec.
type Conda struct {
	// Channels to solve from, in order. Default conda-forge.
	Channels []string `yaml:"channels,omitempty" json:"channels,omitempty"`
	// Packages are conda match specs ("numpy=1.26").
	Packages []string `yaml:"packages" json:"packages"`
}

// Jupyter is the Jupyter part of a spec.
type Jupyter struct {
	// Kernels to register in the image.
	Kernels []Kernel `yaml:"kernels,omitempty" json:"kernels,omitempty"`
	// Cmd is the single-user server command. Default ["jupyterhub-singleuser"].
	Cmd []string `yaml:"cmd,omitempty" json:"cmd,omitempty"`
	// Settings are JupyterLab settings overrides, by plugin ID
	// ("@jupyterlab/notebook-extension:tracker"): each a mapping of the
	// plugin's settings, which become the defaults every user starts from
	// (a user's own settings still win). Locked with the rest; the build
	// refuses a plugin the image's JupyterLab does not have.
	Settings map[string]map[string]any `yaml:"settings,omitempty" json:"settings,omitempty"`
}

// Kernel is one Jupyter kernel the image registers.
type Kernel struct {
	// Name is the kernel's directory name (lower case, digits, '.', '_', '-').
	Name string `yaml:"name" json:"name"`
	// DisplayName is what the notebook UI shows.
	DisplayName string `yaml:"display_name" json:"display_name"`
	// Python is the interpreter that runs the kernel. Default /usr/bin/python3
	// (or /opt/conda/bin/python when the spec has conda packages).
	Python string `yaml:"python,omitempty" json:"python,omitempty"`
}

// User is the user inside the image.
type User struct {
	Name string `yaml:"name" json:"name"`
	UID  int    `yaml:"uid" json:"uid"`
	GID  int    `yaml:"gid" json:"gid"`
}

// Pos is a place in a spec file.
type Pos struct {
	File   string
	Line   int
	Column int
}

func (p Pos) String() string {
	if p.Line == 0 {
		return p.File
	}
	return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Column)
}

// Error is a spec error at a place in the file.
type Error struct {
	Pos   Pos
	Field string
	Msg   string
}

func (e *Error) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("%s: %s: %s", e.Pos, e.Field, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.Pos, e.Msg)
}

var (
	nameRE       = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	aptRE        = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)
	unixUserRE   = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	refRE        = regexp.MustCompile(`^[a-z0-9][a-z0-9._/:@-]*$`)
	pipReqRE     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9_,.-]+\])?\s*([<>=!~]=?[^\s;]+(\s*,\s*[<>=!~]=?[^\s;,]+)*)?(\s*;.+)?$`)
	condaSpecRE  = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]*([=<>!~ ][^\s]*)?$`)
	channelRE    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/:-]*$`)
	indexURLRE   = regexp.MustCompile(`^https?://[^\s]+$`)
	pythonPathRE = regexp.MustCompile(`^/[A-Za-z0-9._/-]+$`)
	// pluginRE is a JupyterLab plugin ID: an npm package name, ':', the
	// plugin's name (characters that need no quoting in a shell word).
	pluginRE = regexp.MustCompile(`^(@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*:[A-Za-z0-9][A-Za-z0-9._-]*$`)
)

// SettingsField is the field path of one plugin's settings in a spec
// (where PosOf finds it).
func SettingsField(plugin string) string { return fmt.Sprintf("jupyter.settings[%q]", plugin) }

// positions maps a field path ("apt[2]", "pip.packages[0]") to where it is.
type positions map[string]Pos

// validate fills defaults and checks the spec, naming file, line, column and
// field of the first mistake.
// CheckName is the rule for the names of envs (here and in the daemon's
// config) and of profiles: they become image names, labels and file names.
func CheckName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%q must be lower case letters, digits, '.', '_' or '-' (at most 63), starting with a letter or digit", name)
	}
	return nil
}

// CheckUnixUser is the rule for the user a container runs as, in a spec
// and in the daemon's config alike.
func CheckUnixUser(name string) error {
	if !unixUserRE.MatchString(name) {
		return fmt.Errorf("%q is not a valid user name (a-z, 0-9, '_' and '-', at most 32, not starting with a digit)", name)
	}
	return nil
}

func (s *Spec) validate(pos positions, file string) error {
	at := func(field string) Pos {
		if p, ok := pos[field]; ok {
			return p
		}
		// Fall back to the enclosing field.
		for f := field; f != ""; {
			i := strings.LastIndexAny(f, ".[")
			if i < 0 {
				break
			}
			f = f[:i]
			if p, ok := pos[f]; ok {
				return p
			}
		}
		return Pos{File: file}
	}
	bad := func(field, format string, args ...any) error {
		return &Error{Pos: at(field), Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if s.Name == "" {
		return bad("name", "missing; give the env a name (lower case letters, digits, '.', '_', '-')")
	}
	if err := CheckName(s.Name); err != nil {
		return bad("name", "%v", err)
	}
	if s.Base == "" {
		return bad("base", "missing; name a Debian-based image, e.g. debian:bookworm-slim")
	}
	if !refRE.MatchString(s.Base) {
		return bad("base", "%q is not an image reference", s.Base)
	}
	seen := map[string]bool{}
	for i, p := range s.Apt {
		f := fmt.Sprintf("apt[%d]", i)
		if !aptRE.MatchString(p) {
			return bad(f, "%q is not a Debian package name (versions are pinned by the lock, not the spec)", p)
		}
		if seen[p] {
			return bad(f, "%q is listed twice", p)
		}
		seen[p] = true
	}
	if c := s.Conda; c != nil {
		if len(c.Packages) == 0 {
			return bad("conda.packages", "empty; list packages or remove the conda section")
		}
		if len(c.Channels) == 0 {
			c.Channels = []string{"conda-forge"}
		}
		for i, ch := range c.Channels {
			if !channelRE.MatchString(ch) {
				return bad(fmt.Sprintf("conda.channels[%d]", i), "%q is not a channel name or URL", ch)
			}
		}
		for i, p := range c.Packages {
			if !condaSpecRE.MatchString(p) {
				return bad(fmt.Sprintf("conda.packages[%d]", i), "%q is not a conda match spec (e.g. numpy=1.26)", p)
			}
		}
	}
	if p := s.Pip; p != nil {
		if len(p.Packages) == 0 {
			return bad("pip.packages", "empty; list packages or remove the pip section")
		}
		if p.IndexURL != "" && !indexURLRE.MatchString(p.IndexURL) {
			return bad("pip.index_url", "%q is not an http(s) URL", p.IndexURL)
		}
		for i, r := range p.Packages {
			if !pipReqRE.MatchString(strings.TrimSpace(r)) {
				return bad(fmt.Sprintf("pip.packages[%d]", i), "%q is not a requirement specifier (e.g. requests>=2.31); options and URLs are not allowed", r)
			}
		}
	}
	if s.Jupyter == nil {
		s.Jupyter = &Jupyter{}
	}
	if len(s.Jupyter.Cmd) == 0 {
		s.Jupyter.Cmd = []string{"jupyterhub-singleuser"}
	}
	kn := map[string]bool{}
	for i, k := range s.Jupyter.Kernels {
		f := fmt.Sprintf("jupyter.kernels[%d]", i)
		if !nameRE.MatchString(k.Name) {
			return bad(f+".name", "%q must be lower case letters, digits, '.', '_' or '-'", k.Name)
		}
		if kn[k.Name] {
			return bad(f+".name", "kernel %q is listed twice", k.Name)
		}
		kn[k.Name] = true
		if k.DisplayName == "" {
			s.Jupyter.Kernels[i].DisplayName = k.Name
		}
		if strings.ContainsAny(k.DisplayName, "\"\\\n") {
			return bad(f+".display_name", "must not contain quotes, backslashes or newlines")
		}
		if k.Python == "" {
			s.Jupyter.Kernels[i].Python = "/usr/bin/python3"
			if s.Conda != nil {
				s.Jupyter.Kernels[i].Python = "/opt/conda/bin/python"
			}
		} else if !pythonPathRE.MatchString(k.Python) {
			return bad(f+".python", "%q is not an absolute path", k.Python)
		}
	}
	for id := range s.Jupyter.Settings {
		if !pluginRE.MatchString(id) {
			return bad(SettingsField(id), "%q is not a JupyterLab plugin ID (package:plugin, e.g. @jupyterlab/notebook-extension:tracker)", id)
		}
	}
	if s.User == nil {
		s.User = &User{Name: "jovyan", UID: 1000, GID: 100}
	}
	if err := CheckUnixUser(s.User.Name); err != nil {
		return bad("user.name", "%v", err)
	}
	if s.User.UID <= 0 || s.User.UID > 65533 {
		return bad("user.uid", "%d; servers never run as root: use 1-65533", s.User.UID)
	}
	if s.User.GID < 0 || s.User.GID > 65533 {
		return bad("user.gid", "%d must be 0-65533", s.User.GID)
	}
	return nil
}

// Checksum is the SHA-256 of the spec's canonical JSON (after defaults): a
// comment or a reordering of keys does not change it; any change of meaning
// does.
func (s *Spec) Checksum() string {
	b, _ := json.Marshal(s)
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// PosOf says where a field path of the spec came from ("" if unknown).
func (s *Spec) PosOf(field string) Pos { return s.pos[field] }
