package images

import (
	"context"
	"fmt"
	"os"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// RootfsImage is a one-layer image of a root file system tarball, with a
// config that holds nothing but what is given: the same tarball and the
// same settings give the same image ID on any machine (unlike `docker
// import`, which stamps the time of the import).
type RootfsImage struct {
	File    string    // the root file system, an uncompressed tar
	Created time.Time // the image's time (e.g. SOURCE_DATE_EPOCH)
	Env     []string  // KEY=VALUE
	Cmd     []string
	Comment string // the history entry's comment
}

// ImportRootfs makes the image and stores it under tag; it returns the image ID.
func ImportRootfs(ctx context.Context, st Store, tag string, r RootfsImage) (string, error) {
	if _, err := os.Stat(r.File); err != nil {
		return "", err
	}
	layer, err := tarball.LayerFromFile(r.File)
	if err != nil {
		return "", fmt.Errorf("%s: %w", r.File, err)
	}
	created := v1.Time{Time: r.Created.UTC()}
	img, err := mutate.Append(empty.Image, mutate.Addendum{Layer: layer, History: v1.History{Created: created, CreatedBy: "spawnd image import-rootfs", Comment: r.Comment}})
	if err != nil {
		return "", err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return "", err
	}
	cf = cf.DeepCopy()
	cf.Created, cf.OS, cf.Architecture = created, "linux", goArch()
	cf.Config.Env, cf.Config.Cmd = r.Env, r.Cmd
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return "", err
	}
	if err := st.WriteImage(ctx, tag, img); err != nil {
		return "", err
	}
	id, err := img.ConfigName()
	if err != nil {
		return "", err
	}
	return id.String(), nil
}
