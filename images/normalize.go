package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Normalize rewrites the image tagged tag so that two builds of one lock,
// on any two engines, give the same image: the same layers (diff IDs), the
// same config and so the same image ID and manifest digest. It removes each
// source of difference a build leaves (docs/ENVS.md, "Same lock, same
// image"):
//
//   - every file time (mtime, atime, ctime) is set to epoch, the lock's
//     creation time, and owners are numeric only;
//   - logs and caches that record when or in which order things ran are
//     dropped: dpkg's and apt's logs, alternatives.log, ldconfig's
//     aux-cache, apt's binary caches, debconf's and dpkg's "-old" backups,
//     pip's cache;
//   - the last-change day of every account in /etc/shadow is set to epoch's;
//   - the config's times, the building container's id and host name, the
//     builder's parent image id and Docker's version are cleared.
//
// Python byte code is made deterministic at build time instead: the build
// sets SOURCE_DATE_EPOCH, so py_compile writes hash-checked .pyc files
// (no source mtime in them).
//
// The first keep layers (the base's, pinned by digest and so the same
// everywhere) are kept as they are, so the image still shares them with its
// base. The rewritten image replaces the tag; it returns the new image ID.
func Normalize(ctx context.Context, st Store, tag string, epoch time.Time, keep int) (string, error) {
	img, err := st.Image(ctx, tag)
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "spawnd-normalize-*")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	out, err := normalizeImage(img, epoch.UTC(), dir, keep)
	if err != nil {
		return "", fmt.Errorf("normalizing %s: %w", tag, err)
	}
	if err := st.WriteImage(ctx, tag, out); err != nil {
		return "", err
	}
	id, err := out.ConfigName()
	if err != nil {
		return "", err
	}
	return id.String(), nil
}

// normalizeImage is Normalize on a v1.Image; layers are written to dir.
func normalizeImage(img v1.Image, epoch time.Time, dir string, keep int) (v1.Image, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	ocf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	// Each layer with its history entry; empty-layer entries (ENV, USER)
	// stand alone, as in the original.
	var adds []mutate.Addendum
	hist := ocf.History
	for i, l := range layers {
		for len(hist) > 0 && hist[0].EmptyLayer {
			adds = append(adds, mutate.Addendum{History: cleanHistory(hist[0], epoch)})
			hist = hist[1:]
		}
		nl := l
		if i >= keep {
			if nl, err = normalizeLayer(l, epoch, filepath.Join(dir, fmt.Sprintf("layer-%03d.tar", i))); err != nil {
				return nil, fmt.Errorf("layer %d: %w", i, err)
			}
		}
		a := mutate.Addendum{Layer: nl}
		if len(hist) > 0 {
			a.History = cleanHistory(hist[0], epoch)
			hist = hist[1:]
		}
		adds = append(adds, a)
	}
	for _, h := range hist {
		adds = append(adds, mutate.Addendum{History: cleanHistory(h, epoch)})
	}
	out, err := mutate.Append(empty.Image, adds...)
	if err != nil {
		return nil, err
	}
	cf, err := out.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg := cf.DeepCopy()
	cfg.Architecture, cfg.OS, cfg.OSVersion, cfg.Variant = ocf.Architecture, ocf.OS, ocf.OSVersion, ocf.Variant
	cfg.Config = ocf.Config
	cfg.Config.Hostname = "" // the building container's id
	cfg.Config.Image = ""    // the classic builder's parent image id, which carries its times
	cfg.Container = ""       // the building container
	cfg.DockerVersion = ""   //nolint:staticcheck // the engine that built it
	cfg.Created = v1.Time{Time: epoch}
	return mutate.ConfigFile(out, cfg)
}

func cleanHistory(h v1.History, epoch time.Time) v1.History {
	h.Created = v1.Time{Time: epoch}
	h.Author = ""
	return h
}

// dropped reports whether a layer entry records when or in which order a
// build ran, and so is left out. Whiteouts are never dropped.
func dropped(name string) bool {
	if strings.HasPrefix(path.Base(name), ".wh.") {
		return false
	}
	switch name {
	case "var/log/dpkg.log", "var/log/alternatives.log", "var/log/bootstrap.log",
		"var/cache/ldconfig/aux-cache", "var/cache/apt/pkgcache.bin", "var/cache/apt/srcpkgcache.bin":
		return true
	}
	for _, p := range []string{"var/log/apt/", "root/.cache/pip/", "tmp/spawnd/"} {
		if strings.HasPrefix(name+"/", p) && name+"/" != p {
			return true
		}
	}
	if strings.HasSuffix(name, "-old") && (strings.HasPrefix(name, "var/cache/debconf/") || strings.HasPrefix(name, "var/lib/dpkg/")) {
		return true
	}
	return false
}

// normalizeLayer writes l's tar, normalized, to file and returns it as a layer.
func normalizeLayer(l v1.Layer, epoch time.Time, file string) (v1.Layer, error) {
	rc, err := l.Uncompressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	f, err := os.Create(file)
	if err != nil {
		return nil, err
	}
	// One pass writes the layer gzipped (fast level) and hashes both forms:
	// loading it into the engine then copies the file as it is, with no
	// second compression and no second read to find its digests.
	zsum, tsum := sha256.New(), sha256.New()
	zw, _ := gzip.NewWriterLevel(io.MultiWriter(f, zsum), gzip.BestSpeed)
	tw := tar.NewWriter(io.MultiWriter(zw, tsum))
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			f.Close()
			return nil, err
		}
		name := strings.TrimPrefix(path.Clean("/"+h.Name), "/")
		if dropped(name) {
			continue
		}
		var body io.Reader = tr
		if h.Typeflag == tar.TypeReg && (name == "etc/shadow" || name == "etc/shadow-") && h.Size < 1<<20 {
			b, err := io.ReadAll(tr)
			if err != nil {
				f.Close()
				return nil, err
			}
			b = shadowDays(b, epoch)
			h.Size = int64(len(b))
			body = bytes.NewReader(b)
		}
		h.ModTime, h.AccessTime, h.ChangeTime = epoch, time.Time{}, time.Time{}
		h.Uname, h.Gname = "", ""
		// Keep extended attributes (file capabilities); drop the rest of
		// the PAX records (times, names).
		var pax map[string]string
		for k, v := range h.PAXRecords {
			if strings.HasPrefix(k, "SCHILY.xattr.") {
				if pax == nil {
					pax = map[string]string{}
				}
				pax[k] = v
			}
		}
		h.PAXRecords, h.Xattrs = pax, nil //nolint:staticcheck // Xattrs is what older writers filled
		h.Format = tar.FormatUnknown
		if err := tw.WriteHeader(h); err != nil {
			f.Close()
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := io.CopyN(tw, body, h.Size); err != nil {
				f.Close()
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		f.Close()
		return nil, err
	}
	if err := zw.Close(); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	fi, err := os.Stat(file)
	if err != nil {
		return nil, err
	}
	return &gzipLayer{path: file, size: fi.Size(),
		digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(zsum.Sum(nil))},
		diffID: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(tsum.Sum(nil))}}, nil
}

// gzipLayer is a gzipped layer tar on disk whose digests are known.
type gzipLayer struct {
	path           string
	size           int64
	digest, diffID v1.Hash
}

func (l *gzipLayer) Digest() (v1.Hash, error)           { return l.digest, nil }
func (l *gzipLayer) DiffID() (v1.Hash, error)           { return l.diffID, nil }
func (l *gzipLayer) Compressed() (io.ReadCloser, error) { return os.Open(l.path) }
func (l *gzipLayer) Size() (int64, error)               { return l.size, nil }
func (l *gzipLayer) MediaType() (types.MediaType, error) {
	return types.DockerLayer, nil
}

func (l *gzipLayer) Uncompressed() (io.ReadCloser, error) {
	f, err := os.Open(l.path)
	if err != nil {
		return nil, err
	}
	zr, err := gzip.NewReader(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return readCloser{Reader: zr, close: func() error { zr.Close(); return f.Close() }}, nil
}

type readCloser struct {
	io.Reader
	close func() error
}

func (r readCloser) Close() error { return r.close() }

// shadowDays sets the last-change field (days since 1970) of every entry of
// a shadow file to epoch's day; useradd writes today's.
func shadowDays(b []byte, epoch time.Time) []byte {
	day := strconv.FormatInt(epoch.Unix()/86400, 10)
	lines := strings.Split(string(b), "\n")
	for i, ln := range lines {
		f := strings.Split(ln, ":")
		if len(f) >= 3 && f[2] != "" {
			f[2] = day
			lines[i] = strings.Join(f, ":")
		}
	}
	return []byte(strings.Join(lines, "\n"))
}
