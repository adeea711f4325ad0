package server

import (
	"errors"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/spawnd"
)

// codes maps each error kind of the core to its API code; anything else is
// internal (TestEveryKindHasACode keeps the table whole).
var codes = map[error]api.Code{
	spawnd.ErrInvalid:      api.CodeInvalid,
	spawnd.ErrForbidden:    api.CodeForbidden,
	spawnd.ErrNotFound:     api.CodeNotFound,
	spawnd.ErrConflict:     api.CodeConflict,
	spawnd.ErrUnavailable:  api.CodeUnavailable,
	spawnd.ErrServerFailed: api.CodeServerFailed,
}

// wireError is the error body for err: the edge's own errors (auth,
// decoding) as they are; a core error by its kind, with the message written
// for the caller; anything else internal, with no detail (the caller logs it).
func wireError(err error) *api.Error {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae
	}
	if kind := spawnd.KindOf(err); kind != nil {
		return &api.Error{Code: codes[kind], Message: spawnd.Message(err)}
	}
	return &api.Error{Code: api.CodeInternal, Message: spawnd.Message(err)}
}

func wireServer(s spawnd.Server) api.Server {
	return api.Server{
		User: s.User, Server: s.Server, State: api.State(s.State), Ready: s.Ready, ExitCode: s.ExitCode, Reason: s.Reason, LogTail: s.LogTail,
		Host: s.Host, Port: s.Port, Env: s.Env, Profile: s.Profile, LockDigest: s.LockDigest, Image: s.Image,
		ImageID: s.ImageID, ContainerID: s.ContainerID, StartedAt: s.StartedAt, Outdated: s.Outdated, Warm: s.Warm,
	}
}

func wireOffer(o spawnd.Offer) api.Options {
	out := api.Options{Network: api.NetworkInfo{Name: o.Network.Name, Mode: o.Network.Mode, Gateway: o.Network.Gateway}}
	for _, e := range o.Envs {
		out.Envs = append(out.Envs, api.EnvInfo{Name: e.Name, Description: e.Description, Image: e.Image, LockDigest: e.LockDigest, Port: e.Port, Default: e.Default})
	}
	for _, p := range o.Profiles {
		out.Profiles = append(out.Profiles, api.ProfileInfo{Name: p.Name, MemoryMB: p.MemoryMB, CPUs: p.CPUs, Pids: p.Pids, Default: p.Default})
	}
	return out
}
