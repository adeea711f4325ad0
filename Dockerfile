# spawnd's own image: a static binary on a small base.
#
# The base images are build arguments, so a site without registry access can
# point them at images it has loaded or made (scripts/build-image does this
# with the host's Go toolchain and scripts/make-base):
#
#   docker build -t spawnd/spawnd .
#   docker build --build-arg GO_IMAGE=my-go:1.26 --build-arg BASE_IMAGE=my-debian:bookworm -t spawnd/spawnd .
#
# The daemon needs the Docker socket and must own users' homes: run it as
# root in the container (or with CAP_CHOWN and the socket's group), with
# homes_root mounted at the same absolute path inside and outside.
ARG GO_IMAGE=golang:1.26-bookworm
ARG BASE_IMAGE=gcr.io/distroless/static-debian12

FROM ${GO_IMAGE} AS build
WORKDIR /src
ENV CGO_ENABLED=0
# With a vendor/ directory in the context (scripts/build-image makes one),
# nothing is downloaded; otherwise modules come from GOPROXY.
ARG GOFLAGS=""
ENV GOFLAGS=${GOFLAGS}
COPY go.mod go.sum ./
RUN if [ ! -d vendor ] && [ -z "$GOFLAGS" ]; then go mod download; fi
COPY . .
# The context has no .git (.dockerignore): the version, commit and whether
# the tree was modified come in as arguments (scripts/build-image sets them).
ARG VERSION=dev
ARG REVISION=""
ARG MODIFIED=false
RUN go build -trimpath -ldflags "-s -w -X github.com/spawnd/spawnd/daemon.Version=${VERSION} -X github.com/spawnd/spawnd/daemon.Revision=${REVISION} -X github.com/spawnd/spawnd/daemon.Modified=${MODIFIED}" -o /out/spawnd ./cmd/spawnd \
 && /out/spawnd --version

FROM ${BASE_IMAGE}
COPY --from=build /out/spawnd /usr/local/bin/spawnd
LABEL io.spawnd.image="spawnd" \
      org.opencontainers.image.title="spawnd" \
      org.opencontainers.image.description="One identical Jupyter environment for the whole team" \
      org.opencontainers.image.source="https://github.com/spawnd/spawnd"
ENTRYPOINT ["/usr/local/bin/spawnd"]
CMD ["serve", "--config", "/etc/spawnd/spawnd.yaml"]
