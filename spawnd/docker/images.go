package docker

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/jsonstream"
	"github.com/moby/moby/client"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/daemon"

	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/engineapi"
)

// ImageInspect implements backend.Builder.
func (e *Engine) ImageInspect(ctx context.Context, ref string) (backend.ImageInfo, error) {
	img, err := e.cli.ImageInspect(ctx, ref)
	if err != nil {
		return backend.ImageInfo{}, fmt.Errorf("inspecting image %s: %w", ref, err)
	}
	info := backend.ImageInfo{ID: img.ID, Size: img.Size, Layers: len(img.RootFS.Layers)}
	if img.Config != nil {
		info.Labels = img.Config.Labels
	}
	return info, nil
}

// RunCapture implements backend.Builder.
func (e *Engine) RunCapture(ctx context.Context, spec backend.RunSpec) (backend.RunResult, error) {
	var tarball []byte
	if len(spec.Files) > 0 {
		var err error
		if tarball, err = filesTar(spec.Files); err != nil {
			return backend.RunResult{}, err
		}
	}
	cfg := &container.Config{Image: spec.Image, Cmd: spec.Cmd, Labels: spec.Labels, User: "0:0", Env: spec.Env}
	hc := &container.HostConfig{NetworkMode: container.NetworkMode(spec.Network)}
	created, err := e.cli.ContainerCreate(ctx, client.ContainerCreateOptions{Config: cfg, HostConfig: hc})
	if err != nil {
		return backend.RunResult{}, fmt.Errorf("creating a container of %s: %w", spec.Image, err)
	}
	id := created.ID
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_, _ = e.cli.ContainerRemove(rctx, id, client.ContainerRemoveOptions{Force: true})
	}()
	if tarball != nil {
		if _, err := e.cli.CopyToContainer(ctx, id, client.CopyToContainerOptions{DestinationPath: "/", Content: bytes.NewReader(tarball)}); err != nil {
			return backend.RunResult{}, fmt.Errorf("copying files into a container of %s: %w", spec.Image, err)
		}
	}
	wait := e.cli.ContainerWait(ctx, id, client.ContainerWaitOptions{Condition: container.WaitConditionNextExit})
	if _, err := e.cli.ContainerStart(ctx, id, client.ContainerStartOptions{}); err != nil {
		return backend.RunResult{}, fmt.Errorf("starting a container of %s: %w", spec.Image, err)
	}
	var res backend.RunResult
	select {
	case w := <-wait.Result:
		res.ExitCode = int(w.StatusCode)
	case err := <-wait.Error:
		return backend.RunResult{}, fmt.Errorf("waiting for a container of %s: %w", spec.Image, err)
	case <-ctx.Done():
		return backend.RunResult{}, ctx.Err()
	}
	logs, err := e.cli.ContainerLogs(ctx, id, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		return backend.RunResult{}, fmt.Errorf("reading the output of a container of %s: %w", spec.Image, err)
	}
	defer logs.Close()
	var stdout, stderr bytes.Buffer
	if _, err := stdcopy.StdCopy(&stdout, &stderr, logs); err != nil {
		return backend.RunResult{}, fmt.Errorf("reading the output of a container of %s: %w", spec.Image, err)
	}
	res.Stdout, res.Stderr = stdout.Bytes(), stderr.Bytes()
	if spec.Collect != "" && res.ExitCode == 0 {
		cp, err := e.cli.CopyFromContainer(ctx, id, client.CopyFromContainerOptions{SourcePath: spec.Collect + "/."})
		if err != nil {
			return res, fmt.Errorf("collecting %s from a container of %s: %w", spec.Collect, spec.Image, err)
		}
		defer cp.Content.Close()
		if err := spec.Collected(cp.Content); err != nil {
			return res, err
		}
	}
	return res, nil
}

// filesTar is RunSpec.Files as a tar stream to unpack at /: each file's
// parent directories first (mode 0755), then the file (mode 0644), all
// owned by root.
func filesTar(files map[string][]byte) ([]byte, error) {
	names := make([]string, 0, len(files))
	for name := range files {
		if !path.IsAbs(name) || path.Clean(name) != name || name == "/" {
			return nil, fmt.Errorf("run spec file %q: want a clean absolute path", name)
		}
		names = append(names, name)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, name := range names {
		var parents []string
		for d := path.Dir(name); d != "/" && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
			parents = append(parents, d)
		}
		for i := len(parents) - 1; i >= 0; i-- {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: parents[i][1:] + "/", Mode: 0o755}); err != nil {
				return nil, err
			}
		}
		body := files[name]
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name[1:], Mode: 0o644, Size: int64(len(body))}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Build implements backend.Builder with the engine's build endpoint.
func (e *Engine) Build(ctx context.Context, spec backend.BuildSpec, onLine func(backend.BuildLine)) (string, error) {
	res, err := e.cli.ImageBuild(ctx, spec.Context, client.ImageBuildOptions{
		Tags: spec.Tags, Labels: spec.Labels, NetworkMode: spec.Network, NoCache: spec.NoCache,
		Remove: true, ForceRemove: true, BuildArgs: buildArgs(spec.BuildArgs),
	})
	if err != nil {
		return "", fmt.Errorf("starting the build: %w", err)
	}
	defer res.Body.Close()
	var id string
	var last []string
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var m jsonstream.Message
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			continue
		}
		if m.Error != nil {
			return "", fmt.Errorf("%s\n%s", m.Error.Message, tail(last))
		}
		if m.Aux != nil {
			var aux struct{ ID string }
			if json.Unmarshal(*m.Aux, &aux) == nil && aux.ID != "" {
				id = aux.ID
			}
		}
		bl := backend.BuildLine{Stream: m.Stream}
		if m.Progress != nil {
			bl.Bytes = m.Progress.Current
		}
		if m.Stream != "" {
			last = append(last, m.Stream)
			if len(last) > 20 {
				last = last[1:]
			}
		}
		if onLine != nil {
			onLine(bl)
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("reading the build output: %w", err)
	}
	if id == "" && len(spec.Tags) > 0 {
		info, err := e.ImageInspect(ctx, spec.Tags[0])
		if err != nil {
			return "", errors.New("the build finished without an image id")
		}
		id = info.ID
	}
	return id, nil
}

func tail(lines []string) string {
	var b bytes.Buffer
	for _, l := range lines {
		b.WriteString(l)
	}
	if b.Len() > 4000 {
		return "…" + b.String()[b.Len()-4000:]
	}
	return b.String()
}

// Image implements backend.ImageStore with go-containerregistry's daemon
// package, buffered in a temporary file (an env image is hundreds of MB).
func (e *Engine) Image(ctx context.Context, tag string) (v1.Image, error) {
	ref, err := name.NewTag(tag)
	if err != nil {
		return nil, fmt.Errorf("%q is not an image tag: %w", tag, err)
	}
	if _, err := e.cli.ImageInspect(ctx, tag); err != nil {
		return nil, fmt.Errorf("inspecting image %s: %w", tag, err)
	}
	img, err := daemon.Image(ref, daemon.WithClient(e.cli), daemon.WithContext(ctx), daemon.WithFileBufferedOpener())
	if err != nil {
		return nil, fmt.Errorf("reading %s out of the engine: %w", tag, err)
	}
	return img, nil
}

// WriteImage implements backend.ImageStore.
func (e *Engine) WriteImage(ctx context.Context, tag string, img v1.Image) error {
	ref, err := name.NewTag(tag)
	if err != nil {
		return fmt.Errorf("%q is not an image tag: %w", tag, err)
	}
	if _, err := daemon.Write(ref, img, daemon.WithClient(e.cli), daemon.WithContext(ctx)); err != nil {
		return fmt.Errorf("loading %s into the engine: %w", tag, err)
	}
	return nil
}

// Info implements backend.Runtime.
func (e *Engine) Info(ctx context.Context) (backend.Info, error) {
	return engineapi.Info(ctx, e.cli, "docker")
}

func buildArgs(m map[string]string) map[string]*string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]*string, len(m))
	for k, v := range m {
		out[k] = &v
	}
	return out
}

// RemoveImage removes an image by tag or id (for spawnd verify's scratch
// image); an image that is already gone is not an error.
func (e *Engine) RemoveImage(ctx context.Context, ref string) error {
	if _, err := e.cli.ImageRemove(ctx, ref, client.ImageRemoveOptions{}); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("removing image %s: %w", ref, err)
	}
	return nil
}

// ListImages lists every image (dangling ones too) that has the label key.
func (e *Engine) ListImages(ctx context.Context, key string) ([]backend.ImageSummary, error) {
	f := client.Filters{}
	f.Add("label", key)
	res, err := e.cli.ImageList(ctx, client.ImageListOptions{Filters: f})
	if err != nil {
		return nil, fmt.Errorf("listing images labelled %s: %w", key, err)
	}
	out := make([]backend.ImageSummary, 0, len(res.Items))
	for _, im := range res.Items {
		var tags []string
		for _, t := range im.RepoTags {
			if t != "<none>:<none>" {
				tags = append(tags, t)
			}
		}
		out = append(out, backend.ImageSummary{ID: im.ID, Tags: tags, Labels: im.Labels, Size: im.Size})
	}
	return out, nil
}

// ImagesInUse maps the image ID of every container, running or not, to one
// of its names.
func (e *Engine) ImagesInUse(ctx context.Context) (map[string]string, error) {
	res, err := e.cli.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil {
		return nil, fmt.Errorf("listing containers: %w", err)
	}
	out := map[string]string{}
	for _, c := range res.Items {
		name := c.ID[:12]
		if len(c.Names) > 0 {
			name = strings.TrimPrefix(c.Names[0], "/")
		}
		out[c.ImageID] = name
	}
	return out, nil
}
