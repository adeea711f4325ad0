package images

import (
	"context"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"mime"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"strings"
	"sync"

	"github.com/spawnd/spawnd/envs"
)

// defaultIndex is pip's default index.
const defaultIndex = "https://pypi.org/simple"

// A yanked release (PEP 592) is one its index withdrew, usually for a
// serious bug. pip installs one when it is pinned exactly, with a warning
// that a lock would hide, and pip before 23.1 does not mark it in its
// report. So the lock asks the index itself, for every file it pins.

// yankedFile is what an index's project page says of one file.
type yankedFile struct {
	yanked bool
	reason string
}

// checkYanked refuses a lock that pins a yanked file; it asks the index's
// project page of every package, a few at a time.
func checkYanked(ctx context.Context, pkgs []envs.PipPackage, indexURL string, opts *Options) error {
	if indexURL == "" {
		indexURL = defaultIndex
	}
	hc, err := opts.httpClient()
	if err != nil {
		return err
	}
	sem := make(chan struct{}, fetchWorkers)
	errs := make([]error, len(pkgs))
	var wg sync.WaitGroup
	for i, p := range pkgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			files, err := projectFiles(ctx, hc, indexURL, p.Name)
			if err != nil {
				errs[i] = fmt.Errorf("pip.packages: checking whether %s %s is yanked: %w", p.Name, p.Version, err)
				return
			}
			if f, ok := files[p.File]; ok && f.yanked {
				why := ""
				if f.reason != "" {
					why = " (" + f.reason + ")"
				}
				errs[i] = fmt.Errorf("pip.packages: %s %s is a release its index has yanked%s: withdrawn, usually for a serious bug; pin another version of %s", p.Name, p.Version, why, p.Name)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

var (
	anchorRE = regexp.MustCompile(`(?is)<a\s([^>]*)>`)
	attrRE   = regexp.MustCompile(`(?is)([a-z-]+)\s*=\s*"([^"]*)"`)
)

// projectFiles reads an index's project page (PEP 691 JSON, or PEP 503
// HTML with PEP 592's data-yanked) into its files by name.
func projectFiles(ctx context.Context, hc *http.Client, indexURL, project string) (map[string]yankedFile, error) {
	u := strings.TrimSuffix(indexURL, "/") + "/" + url.PathEscape(project) + "/"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/vnd.pypi.simple.v1+json, text/html;q=0.1")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	files := map[string]yankedFile{}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt == "application/vnd.pypi.simple.v1+json" {
		var page struct {
			Files []struct {
				Filename string          `json:"filename"`
				Yanked   json.RawMessage `json:"yanked"`
			} `json:"files"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			return nil, fmt.Errorf("GET %s: %w", u, err)
		}
		for _, f := range page.Files {
			var yf yankedFile
			var b bool
			var reason string
			if json.Unmarshal(f.Yanked, &b) == nil {
				yf.yanked = b
			} else if json.Unmarshal(f.Yanked, &reason) == nil {
				yf = yankedFile{yanked: true, reason: reason}
			}
			files[f.Filename] = yf
		}
		return files, nil
	}
	for _, a := range anchorRE.FindAllStringSubmatch(string(body), -1) {
		var href string
		var yf yankedFile
		for _, m := range attrRE.FindAllStringSubmatch(a[1], -1) {
			switch strings.ToLower(m[1]) {
			case "href":
				href = html.UnescapeString(m[2])
			case "data-yanked":
				yf = yankedFile{yanked: true, reason: html.UnescapeString(m[2])}
			}
		}
		if href == "" {
			continue
		}
		name := path.Base(strings.SplitN(strings.SplitN(href, "#", 2)[0], "?", 2)[0])
		if un, err := url.PathUnescape(name); err == nil {
			name = un
		}
		files[name] = yf
	}
	return files, nil
}
