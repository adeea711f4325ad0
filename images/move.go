package images

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/spawnd/spawnd/spawnd/backend"
)

// Store is where images are read from and written to: the engine, through
// go-containerregistry's daemon package (backend.ImageStore).
type Store = backend.ImageStore

// Push copies an image from the engine to a registry and returns the
// reference by digest (REGISTRY/spawnd/ENV@sha256:...), which is what a
// Swarm service or another machine should pull.
func Push(ctx context.Context, st Store, ref, dst string, opts ...remote.Option) (string, error) {
	img, err := st.Image(ctx, ref)
	if err != nil {
		return "", err
	}
	target, err := name.ParseReference(dst, name.WeakValidation)
	if err != nil {
		return "", fmt.Errorf("%q is not an image reference: %w", dst, err)
	}
	if err := remote.Write(target, img, append(opts, remote.WithContext(ctx))...); err != nil {
		return "", fmt.Errorf("pushing %s to %s: %w", ref, dst, err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	return target.Context().Digest(d.String()).String(), nil
}

// SaveOCI writes an image from the engine to file as an OCI image layout in
// a tar archive (for sites without registry access), with the tag in the
// org.opencontainers.image.ref.name annotation.
func SaveOCI(ctx context.Context, st Store, ref, file string) (v1.Hash, error) {
	img, err := st.Image(ctx, ref)
	if err != nil {
		return v1.Hash{}, err
	}
	dir, err := os.MkdirTemp("", "spawnd-oci-*")
	if err != nil {
		return v1.Hash{}, err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{ocispec.AnnotationRefName: ref})); err != nil {
		return v1.Hash{}, fmt.Errorf("writing the OCI layout: %w", err)
	}
	tmp := file + ".partial"
	if err := tarDir(dir, tmp); err != nil {
		os.Remove(tmp)
		return v1.Hash{}, err
	}
	if err := os.Rename(tmp, file); err != nil {
		return v1.Hash{}, err
	}
	return img.Digest()
}

// LoadOCI loads every image of an OCI archive made by SaveOCI into the
// engine, tagged as the archive names them, and returns the tags.
func LoadOCI(ctx context.Context, st Store, file string) ([]string, error) {
	dir, err := os.MkdirTemp("", "spawnd-oci-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := untar(file, dir); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("%s is not an OCI archive: %w", file, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var tags []string
	for _, desc := range im.Manifests {
		refName := desc.Annotations[ocispec.AnnotationRefName]
		if _, err := name.NewTag(refName); err != nil {
			return nil, fmt.Errorf("%s: image %s has no usable tag (%q)", file, desc.Digest, refName)
		}
		img, err := idx.Image(desc.Digest)
		if err != nil {
			return nil, err
		}
		if err := st.WriteImage(ctx, refName, img); err != nil {
			return nil, err
		}
		tags = append(tags, refName)
	}
	return tags, nil
}

func tarDir(dir, file string) error {
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	err = filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		h, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			src, err := os.Open(path)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, src)
			src.Close()
			return err
		}
		return nil
	})
	if err == nil {
		err = tw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func untar(file, dir string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		clean := filepath.Clean(h.Name)
		if filepath.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") {
			return fmt.Errorf("the archive holds a path outside its root: %q", h.Name)
		}
		target := filepath.Join(dir, clean)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			out, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
			if err != nil {
				return err
			}
			_, err = io.Copy(out, tr)
			out.Close()
			if err != nil {
				return err
			}
		default:
			return fmt.Errorf("the archive holds an unexpected entry %q", h.Name)
		}
	}
}
