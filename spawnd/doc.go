// Package spawnd is the daemon core: the lifecycle of user servers (start,
// status, progress, stop; idempotency and single flight per server;
// reconciliation with the engine after restarts; reaping of half-made
// containers), the users' homes on the host, and the small Runtime interface
// that the engine backends implement (Docker in spawnd/docker).
//
// The engine is the source of truth: every container carries io.spawnd.*
// labels, the in-memory view is rebuilt from them at start-up and kept
// current by the engine's event stream, and status is answered from memory.
package spawnd

// Labels spawnd puts on every container it creates. They are the database:
// nothing else about a server is stored anywhere.
const (
	LabelManaged    = "io.spawnd.managed"          // "true"
	LabelInstance   = "io.spawnd.instance"         // Config.Instance
	LabelUser       = "io.spawnd.user"             // the JupyterHub user name, unescaped
	LabelServer     = "io.spawnd.server"           // the server name; "" for the default server
	LabelEnv        = "io.spawnd.env"              // env name
	LabelProfile    = "io.spawnd.profile"          // resource profile name
	LabelLockDigest = "io.spawnd.lock-digest"      // the env's lock digest at start
	LabelHomeScheme = "io.spawnd.home-scheme"      // HomeScheme
	LabelPort       = "io.spawnd.port"             // the single-user port in the container
	LabelHubToken   = "io.spawnd.hub-token-sha256" // SHA-256 of the hub's API token the server was started with
)
