package images

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Differences lists what differs between two images, for a person who
// wants to know why two builds of one lock did not give one digest: the
// config when it differs, a layer count that differs, and per layer every
// file whose content, mode, owner, time or link target differs, or that is
// in one layer only. Nil means the layers and config are the same.
func Differences(a, b v1.Image) ([]string, error) {
	var out []string
	ca, err := a.RawConfigFile()
	if err != nil {
		return nil, err
	}
	cb, err := b.RawConfigFile()
	if err != nil {
		return nil, err
	}
	if string(ca) != string(cb) {
		out = append(out, "config")
	}
	la, err := a.Layers()
	if err != nil {
		return nil, err
	}
	lb, err := b.Layers()
	if err != nil {
		return nil, err
	}
	if len(la) != len(lb) {
		return append(out, fmt.Sprintf("layers: %d and %d", len(la), len(lb))), nil
	}
	for i := range la {
		da, _ := la[i].DiffID()
		db, _ := lb[i].DiffID()
		if da == db {
			continue
		}
		fa, err := layerFiles(la[i])
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		fb, err := layerFiles(lb[i])
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		var names []string
		for n, s := range fa {
			if fb[n] != s {
				names = append(names, n)
			}
		}
		for n := range fb {
			if _, ok := fa[n]; !ok {
				names = append(names, n)
			}
		}
		sort.Strings(names)
		if len(names) == 0 {
			names = []string{"(the same files in another order)"}
		}
		for _, n := range names {
			out = append(out, fmt.Sprintf("layer %d: %s", i, n))
		}
	}
	return out, nil
}

// layerFiles maps each entry of a layer to a fingerprint of its header
// fields and content.
func layerFiles(l v1.Layer) (map[string]string, error) {
	rc, err := l.Uncompressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	files := map[string]string{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files, nil
		}
		if err != nil {
			return nil, err
		}
		sum := sha256.New()
		fmt.Fprintf(sum, "%o %d %d %d %s %c\x00", h.Mode, h.Uid, h.Gid, h.ModTime.Unix(), h.Linkname, h.Typeflag)
		if _, err := io.Copy(sum, tr); err != nil {
			return nil, err
		}
		files[h.Name] = hex.EncodeToString(sum.Sum(nil))
	}
}
