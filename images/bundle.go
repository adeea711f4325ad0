package images

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/spawnd/spawnd/envs"
)

// A bundle is everything a lock needs to be rebuilt with no network, kept
// as an OCI image layout (a directory any OCI tool reads): the lock's base
// image, and an artifact whose config is empty and whose blobs are the
// lock itself and every .deb, conda package and wheel it names. A blob's digest is the
// SHA-256 the lock pins, so the layout's own integrity is the lock's.
const (
	// BundleArtifactType marks the artifact in the layout's index.
	BundleArtifactType = "application/vnd.spawnd.bundle.v1"
	mediaBundleConfig  = types.MediaType("application/vnd.spawnd.bundle.config.v1+json")
	mediaLock          = types.MediaType("application/vnd.spawnd.lock.v1+json")
	mediaDeb           = types.MediaType("application/vnd.debian.binary-package")
	mediaWheel         = types.MediaType("application/vnd.spawnd.python.wheel")
	mediaConda         = types.MediaType("application/vnd.spawnd.conda.package")

	annRole       = "io.spawnd.bundle.role" // "base" or "packages"
	annLockDigest = "io.spawnd.lock-digest"
	// annBaseManifest is the base image's manifest digest, in the same
	// repository as the artifact when the bundle is in a registry.
	annBaseManifest = "io.spawnd.bundle.base"
	annKind         = "io.spawnd.package.kind" // "apt", "conda" or "pip"
)

// BundleEngine is what bundling needs of an engine: building, and reading
// an image out of it and loading one into it (a Builder).
type BundleEngine = Builder

// bundleParts are the two images of a bundle: the lock's base, from the
// engine, and the artifact of its packages, from the cache, which names the
// base's manifest digest (a registry bundle finds its base by it).
func bundleParts(ctx context.Context, st BundleEngine, l *envs.Lock, cache Cache) (base, art v1.Image, err error) {
	fs := Files(l)
	if missing := cache.Missing(fs); len(missing) > 0 {
		return nil, nil, fmt.Errorf("%d package files of the lock are not in the package cache %s (first: %s); build the env first (spawnd build), which fetches them", len(missing), cache.Dir, missing[0])
	}
	if base, err = baseImage(ctx, st, l); err != nil {
		return nil, nil, err
	}
	baseManifest, err := base.Digest()
	if err != nil {
		return nil, nil, err
	}
	adds := []mutate.Addendum{{Layer: static.NewLayer(l.Marshal(), mediaLock), MediaType: mediaLock,
		Annotations: map[string]string{ocispec.AnnotationTitle: "lock.json"}}}
	for _, f := range fs {
		mt := map[string]types.MediaType{"apt": mediaDeb, "conda": mediaConda, "pip": mediaWheel}[f.Kind]
		fl, err := newFileLayer(cache.Path(f.SHA256), f.SHA256, mt)
		if err != nil {
			return nil, nil, err
		}
		adds = append(adds, mutate.Addendum{Layer: fl, MediaType: mt,
			Annotations: map[string]string{ocispec.AnnotationTitle: f.File, annKind: f.Kind}})
	}
	art, err = mutate.Append(mutate.MediaType(mutate.ConfigMediaType(empty.Image, mediaBundleConfig), types.OCIManifestSchema1), adds...)
	if err != nil {
		return nil, nil, err
	}
	art = mutate.Annotations(art, map[string]string{annLockDigest: l.Digest, annBaseManifest: baseManifest.String(),
		ocispec.AnnotationTitle: "spawnd bundle of env " + l.Env}).(v1.Image)
	return base, art, nil
}

// WriteBundle writes the bundle of a lock to dir, which must not exist yet:
// the base image from the engine and every package file from the cache
// (spawnd build fetches them). The layout is written beside dir and renamed
// into place whole.
func WriteBundle(ctx context.Context, st BundleEngine, l *envs.Lock, cache Cache, dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return fmt.Errorf("%s already exists; a bundle is written to a new directory", dir)
	}
	base, art, err := bundleParts(ctx, st, l, cache)
	if err != nil {
		return err
	}
	tmp := dir + ".partial"
	_ = os.RemoveAll(tmp)
	defer os.RemoveAll(tmp)
	p, err := layout.Write(tmp, empty.Index)
	if err != nil {
		return fmt.Errorf("writing the bundle: %w", err)
	}
	if err := p.AppendImage(base, layout.WithAnnotations(map[string]string{annRole: "base", ocispec.AnnotationRefName: l.Base.Ref})); err != nil {
		return fmt.Errorf("writing the base image into the bundle: %w", err)
	}
	if err := p.AppendImage(art, layout.WithAnnotations(map[string]string{annRole: "packages", annLockDigest: l.Digest,
		ocispec.AnnotationRefName: l.Env + "-" + l.ShortDigest()})); err != nil {
		return fmt.Errorf("writing the packages into the bundle: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("writing the bundle: %w", err)
	}
	return nil
}

// PushBundle pushes the bundle of a lock to a registry: the base image by
// its digest into the same repository, then the artifact under dst's tag
// (default: ENV-<12 hex of the lock digest>). It returns the artifact's
// reference by digest, which build --from-bundle takes.
func PushBundle(ctx context.Context, st BundleEngine, l *envs.Lock, cache Cache, dst string, opts ...remote.Option) (string, error) {
	ref, err := name.ParseReference(dst, name.WeakValidation)
	if err != nil {
		return "", fmt.Errorf("%q is not a registry reference (REGISTRY/REPOSITORY[:TAG]): %w", dst, err)
	}
	if !strings.Contains(dst, ":") || strings.LastIndex(dst, ":") < strings.LastIndex(dst, "/") {
		ref = ref.Context().Tag(l.Env + "-" + l.ShortDigest())
	}
	base, art, err := bundleParts(ctx, st, l, cache)
	if err != nil {
		return "", err
	}
	opts = append(opts, remote.WithContext(ctx))
	bd, err := base.Digest()
	if err != nil {
		return "", err
	}
	if err := remote.Write(ref.Context().Digest(bd.String()), base, opts...); err != nil {
		return "", fmt.Errorf("pushing the base image to %s: %w", ref.Context(), err)
	}
	if err := remote.Write(ref, art, opts...); err != nil {
		return "", fmt.Errorf("pushing the bundle to %s: %w", ref, err)
	}
	ad, err := art.Digest()
	if err != nil {
		return "", err
	}
	return ref.Context().Digest(ad.String()).String(), nil
}

// baseImage is the lock's base image as the engine holds it, checked to be
// the one the lock names.
func baseImage(ctx context.Context, st BundleEngine, l *envs.Lock) (v1.Image, error) {
	info, err := st.ImageInspect(ctx, l.Base.Ref)
	if err != nil {
		return nil, fmt.Errorf("the lock's base image %s: %w", l.Base.Ref, err)
	}
	if info.ID != l.Base.Digest {
		return nil, fmt.Errorf("%s on this engine is %s, but the lock was made on %s; bundle on the machine that built the lock", l.Base.Ref, info.ID, l.Base.Digest)
	}
	return st.Image(ctx, l.Base.Ref)
}

// Bundle is a bundle opened for reading, from an OCI layout or a registry.
type Bundle struct {
	// Source is the layout's directory or the artifact's reference.
	Source string
	Lock   *envs.Lock
	art    v1.Image
	man    *v1.Manifest
	base   func() (v1.Image, error)
}

// OpenBundle reads the lock a bundle holds: src is a directory (an OCI
// layout written by spawnd bundle) or a registry reference (pushed by
// spawnd bundle --push).
func OpenBundle(src string, opts ...remote.Option) (*Bundle, error) {
	b := &Bundle{Source: src}
	if fi, err := os.Stat(src); err == nil && fi.IsDir() {
		if err := b.openLayout(src); err != nil {
			return nil, err
		}
	} else {
		ref, perr := name.ParseReference(src, name.WeakValidation)
		if perr != nil || !strings.Contains(src, "/") {
			return nil, fmt.Errorf("bundle %s: no such directory, nor a registry reference (REGISTRY/REPOSITORY:TAG or @sha256:...)", src)
		}
		if b.art, err = remote.Image(ref, opts...); err != nil {
			return nil, fmt.Errorf("bundle %s: %w", src, err)
		}
		b.base = func() (v1.Image, error) {
			d := b.man.Annotations[annBaseManifest]
			if d == "" {
				return nil, fmt.Errorf("bundle %s names no base image (%s)", src, annBaseManifest)
			}
			return remote.Image(ref.Context().Digest(d), opts...)
		}
	}
	var err error
	if b.man, err = b.art.Manifest(); err != nil {
		return nil, fmt.Errorf("bundle %s: %w", src, err)
	}
	for _, d := range b.man.Layers {
		if d.MediaType != mediaLock {
			continue
		}
		l, err := b.art.LayerByDigest(d.Digest)
		if err != nil {
			return nil, fmt.Errorf("bundle %s: its lock: %w", src, err)
		}
		rc, err := l.Compressed()
		if err != nil {
			return nil, fmt.Errorf("bundle %s: its lock: %w", src, err)
		}
		raw, err := io.ReadAll(io.LimitReader(rc, 64<<20))
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("bundle %s: its lock: %w", src, err)
		}
		if b.Lock, err = envs.ParseLock(src+": lock.json", raw); err != nil {
			return nil, fmt.Errorf("bundle %s: its lock: %w", src, err)
		}
	}
	if b.Lock == nil {
		return nil, fmt.Errorf("bundle %s holds no lock", src)
	}
	if b.man.Annotations[annLockDigest] != b.Lock.Digest {
		return nil, fmt.Errorf("bundle %s: its lock is %s, but the bundle says %s; the bundle was altered", src, b.Lock.Digest, b.man.Annotations[annLockDigest])
	}
	return b, nil
}

func (b *Bundle) openLayout(dir string) error {
	p, err := layout.FromPath(dir)
	if err != nil {
		return fmt.Errorf("%s is not an OCI image layout (a bundle written by spawnd bundle): %w", dir, err)
	}
	ix, err := p.ImageIndex()
	if err != nil {
		return fmt.Errorf("bundle %s: %w", dir, err)
	}
	im, err := ix.IndexManifest()
	if err != nil {
		return fmt.Errorf("bundle %s: %w", dir, err)
	}
	var base v1.Hash
	for _, d := range im.Manifests {
		switch d.Annotations[annRole] {
		case "base":
			base = d.Digest
		case "packages":
			if b.art != nil {
				return fmt.Errorf("bundle %s holds more than one lock", dir)
			}
			if b.art, err = p.Image(d.Digest); err != nil {
				return fmt.Errorf("bundle %s: %w", dir, err)
			}
		}
	}
	if b.art == nil || base == (v1.Hash{}) {
		return fmt.Errorf("bundle %s has no spawnd packages or no base image (index.json names neither role)", dir)
	}
	b.base = func() (v1.Image, error) { return p.Image(base) }
	return nil
}

// Import fills the cache with every package file of the bundle's lock,
// checking each one's bytes against the lock, and loads the base image into
// the engine when the engine does not have it. A file the bundle lacks or
// holds with other bytes is an error that names the package.
func (b *Bundle) Import(ctx context.Context, st BundleEngine, cache Cache, progress func(Event)) error {
	byTitle := map[string]v1.Descriptor{}
	for _, d := range b.man.Layers {
		byTitle[d.Annotations[ocispec.AnnotationTitle]] = d
	}
	fs := Files(b.Lock)
	for _, f := range fs {
		if cache.Has(f.SHA256) {
			continue
		}
		d, ok := byTitle[f.File]
		if !ok {
			return fmt.Errorf("bundle %s lacks %s", b.Source, f)
		}
		if d.Digest.Hex != f.SHA256 {
			return &HashMismatchError{File: f, Got: d.Digest.Hex, From: "bundle " + b.Source}
		}
		var rc io.ReadCloser
		l, err := b.art.LayerByDigest(d.Digest)
		if err == nil {
			rc, err = l.Compressed()
		}
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("bundle %s lacks %s (blobs/sha256/%s is missing)", b.Source, f, f.SHA256)
		}
		if err != nil {
			return fmt.Errorf("bundle %s lacks %s: %w", b.Source, f, err)
		}
		err = cache.Put(f, rc, "bundle "+b.Source)
		rc.Close()
		if err != nil {
			return err
		}
	}
	if progress != nil {
		progress(Event{Time: time.Now(), Phase: "bundle", Step: "packages", Message: fmt.Sprintf("%d package files from the bundle are in the cache, checked", len(fs))})
	}
	info, err := st.ImageInspect(ctx, b.Lock.Base.Ref)
	if err == nil && info.ID == b.Lock.Base.Digest {
		return nil
	}
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("inspecting %s: %w", b.Lock.Base.Ref, err)
	}
	img, err := b.base()
	if err != nil {
		return fmt.Errorf("bundle %s: the base image: %w", b.Source, err)
	}
	if id, err := img.ConfigName(); err != nil || id.String() != b.Lock.Base.Digest {
		return fmt.Errorf("bundle %s: its base image is %v, but its lock names %s; the bundle was altered", b.Source, id, b.Lock.Base.Digest)
	}
	if err := st.WriteImage(ctx, b.Lock.Base.Ref, img); err != nil {
		return fmt.Errorf("loading the base image %s from the bundle: %w", b.Lock.Base.Ref, err)
	}
	if progress != nil {
		progress(Event{Time: time.Now(), Phase: "bundle", Step: "base", Message: "loaded the base image " + b.Lock.Base.Ref + " (" + b.Lock.Base.Digest[:19] + ") from the bundle"})
	}
	return nil
}

// fileLayer is a blob on disk whose SHA-256 is known: its bytes are the
// layer as stored (a .deb or a wheel is not a tar, and is not compressed
// again).
type fileLayer struct {
	path string
	hash v1.Hash
	size int64
	mt   types.MediaType
}

func newFileLayer(path, sum string, mt types.MediaType) (*fileLayer, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	return &fileLayer{path: path, hash: v1.Hash{Algorithm: "sha256", Hex: sum}, size: fi.Size(), mt: mt}, nil
}

func (f *fileLayer) Digest() (v1.Hash, error)             { return f.hash, nil }
func (f *fileLayer) DiffID() (v1.Hash, error)             { return f.hash, nil }
func (f *fileLayer) Compressed() (io.ReadCloser, error)   { return os.Open(f.path) }
func (f *fileLayer) Uncompressed() (io.ReadCloser, error) { return os.Open(f.path) }
func (f *fileLayer) Size() (int64, error)                 { return f.size, nil }
func (f *fileLayer) MediaType() (types.MediaType, error)  { return f.mt, nil }
