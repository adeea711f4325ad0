package images

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"

	"github.com/spawnd/spawnd/envs"
)

var sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// aptLockScript resolves the packages given as arguments with apt itself:
// the URIs apt would fetch (the full closure, dependencies included), then
// apt-cache's record of each, which carries its SHA256.
const aptLockScript = `apt-get update -qq >/dev/null || apt-get update >&2
apt-get install -y -qq --no-install-recommends --print-uris "$@" >/tmp/uris || exit $?
cat /tmp/uris
echo "` + aptShowMarker + `"
sed -n "s/^'[^']*' \\([^_]*\\)_\\([^_]*\\)_[^ ]* .*/\\1=\\2/p" /tmp/uris | sed 's/%3a/:/g' | xargs -r apt-cache show --no-all-versions`

const aptShowMarker = "--- spawnd: apt-cache show"

// parseAptURIs reads `apt-get install --print-uris` output: one line per
// package to fetch, "'URL' FILE SIZE SHA256:HEX".
func parseAptURIs(out []byte) ([]envs.AptPackage, error) {
	var pkgs []envs.AptPackage
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "'") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 4 {
			return nil, fmt.Errorf("unexpected apt output line %q", line)
		}
		name, version, arch, err := unescapeAptFile(fields[1])
		if err != nil {
			return nil, err
		}
		size, err := strconv.ParseInt(fields[2], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("unexpected size in apt output line %q", line)
		}
		sum := ""
		if algo, h, ok := strings.Cut(fields[3], ":"); ok && strings.EqualFold(algo, "SHA256") {
			sum = h
		}
		pkgs = append(pkgs, envs.AptPackage{Name: name, Version: version, Arch: arch, SHA256: sum, Size: size, URL: strings.Trim(fields[0], "'")})
	}
	return pkgs, nil
}

// parseAptLock reads the output of aptLockScript: the URIs, then apt-cache's
// records, from which each package gets its SHA256.
func parseAptLock(out []byte) ([]envs.AptPackage, error) {
	uris, show, _ := bytes.Cut(out, []byte(aptShowMarker))
	pkgs, err := parseAptURIs(uris)
	if err != nil {
		return nil, err
	}
	sums := map[string]string{}
	for _, stanza := range strings.Split(string(show), "\n\n") {
		var name, version, sum string
		for _, line := range strings.Split(stanza, "\n") {
			k, v, ok := strings.Cut(line, ": ")
			if !ok {
				continue
			}
			switch k {
			case "Package":
				name = v
			case "Version":
				version = v
			case "SHA256":
				sum = v
			}
		}
		if name != "" {
			sums[name+"="+version] = sum
		}
	}
	for i, p := range pkgs {
		if p.SHA256 == "" {
			p.SHA256 = sums[p.Name+"="+p.Version]
		}
		if !sha256RE.MatchString(p.SHA256) {
			return nil, fmt.Errorf("apt gave no SHA256 for %s %s", p.Name, p.Version)
		}
		pkgs[i] = p
	}
	return pkgs, nil
}

// pipReport is the part of pip's installation report (pip >= 22.2,
// `pip install --dry-run --report`) that a lock needs.
type pipReport struct {
	Version string `json:"version"`
	Install []struct {
		DownloadInfo struct {
			URL         string `json:"url"`
			ArchiveInfo *struct {
				Hash   string            `json:"hash"`
				Hashes map[string]string `json:"hashes"`
			} `json:"archive_info"`
			DirInfo *json.RawMessage `json:"dir_info"`
			VCSInfo *json.RawMessage `json:"vcs_info"`
		} `json:"download_info"`
		Metadata struct {
			Name    string `json:"name"`
			Version string `json:"version"`
		} `json:"metadata"`
		// IsYanked: the index withdrew this release (PEP 592); pip still
		// picks it when a spec pins it with ==.
		IsYanked bool `json:"is_yanked"`
	} `json:"install"`
}

// parsePipReport reads pip's installation report into locked packages, each
// with the SHA-256 of the file pip chose.
func parsePipReport(out []byte) ([]envs.PipPackage, error) {
	i := bytes.IndexByte(out, '{')
	if i < 0 {
		return nil, fmt.Errorf("pip printed no installation report")
	}
	var r pipReport
	if err := json.Unmarshal(out[i:], &r); err != nil {
		return nil, fmt.Errorf("decoding pip's installation report: %w", err)
	}
	if r.Version != "0" && r.Version != "1" {
		return nil, fmt.Errorf("pip's installation report has version %q; spawnd reads versions 0 and 1", r.Version)
	}
	var pkgs []envs.PipPackage
	for _, in := range r.Install {
		name, version := in.Metadata.Name, in.Metadata.Version
		if in.IsYanked {
			return nil, fmt.Errorf("pip.packages: %s %s is a release its index has yanked (withdrawn, usually for a serious bug); pin another version of %s", name, version, name)
		}
		di := in.DownloadInfo
		if di.DirInfo != nil || di.VCSInfo != nil || di.ArchiveInfo == nil {
			return nil, fmt.Errorf("pip would install %s from %s, which has no archive hash; only index packages can be locked", name, di.URL)
		}
		sum := di.ArchiveInfo.Hashes["sha256"]
		if sum == "" {
			if algo, h, ok := strings.Cut(di.ArchiveInfo.Hash, "="); ok && algo == "sha256" {
				sum = h
			}
		}
		if !sha256RE.MatchString(sum) {
			return nil, fmt.Errorf("pip reported no sha256 for %s %s (%s)", name, version, di.URL)
		}
		fileURL := strings.SplitN(di.URL, "#", 2)[0]
		file := path.Base(fileURL)
		if !strings.HasSuffix(file, ".whl") {
			return nil, fmt.Errorf("pip.packages: %s %s has no wheel for the image's Python and platform, only %s; builds run without a network and install wheels only: pin a version that has a wheel, or publish a wheel to your own index", name, version, file)
		}
		pkgs = append(pkgs, envs.PipPackage{Name: normalizePipName(name), Version: version, SHA256: sum, File: file, URL: fileURL})
	}
	return pkgs, nil
}

var pipNameRE = regexp.MustCompile(`[-_.]+`)

// normalizePipName is PEP 503 normalization.
func normalizePipName(n string) string {
	return strings.ToLower(pipNameRE.ReplaceAllString(n, "-"))
}
