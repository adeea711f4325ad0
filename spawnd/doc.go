// Package spawnd is the daemon core: the lifecycle of user servers (start,
// status, progress, stop; idempotency and single flight per server;
// reconciliation with the engine after restarts; reaping of half-made
// containers), the users' homes on the host, the config and its rules, and
// the team policies. It speaks its own language: domain types (Server,
// StartRequest, ProgressEvent, Offer) and a closed set of errors (ErrInvalid,
// ErrForbidden, ErrNotFound, ErrConflict, ErrUnavailable, ErrServerFailed)
// that the HTTP edge (api/server) maps to its wire types and status codes.
// It runs containers through spawnd/backend.Runtime and never imports the
// API package or an engine client (TestForbiddenImports).
//
// The engine is the source of truth: every container carries io.spawnd.*
// labels (package labels), the in-memory view is rebuilt from them at
// start-up and kept current by the engine's event stream, and status is
// answered from memory.
package spawnd
