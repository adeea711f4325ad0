// Package labels declares, once, every io.spawnd.* label spawnd puts on
// containers, images and networks. The labels are spawnd's database: nothing
// else about a server is stored anywhere, so a name here never changes
// silently. The package imports nothing, so the core, the backends and the
// image builder all take their names from here.
package labels

// Labels on user containers (and, for Managed and Instance, on the network).
const (
	Managed    = "io.spawnd.managed"          // "true"
	Instance   = "io.spawnd.instance"         // the daemon's instance name
	User       = "io.spawnd.user"             // the JupyterHub user name, unescaped
	Server     = "io.spawnd.server"           // the server name; "" for the default server
	Profile    = "io.spawnd.profile"          // resource profile name
	HomeScheme = "io.spawnd.home-scheme"      // the home escaping scheme (spawnd.HomeScheme)
	Port       = "io.spawnd.port"             // the single-user port in the container, for admins reading `docker ps`
	HubToken   = "io.spawnd.hub-token-sha256" // SHA-256 of the hub's API token the server was started with
	HomeSlot   = "io.spawnd.home-slot"        // the slot its home is mounted on (home_owner system, range; every warm server)
	// Pool marks a warm server of a pool (its name). A warm server has no
	// User or Server label: labels cannot change, so whose it became is in
	// its slot's claim file (spawnd/pool.go), never here.
	Pool = "io.spawnd.pool"
	// PoolCmd is the command a warm server pre-imported (its base name): a
	// start whose command differs boots cold.
	PoolCmd = "io.spawnd.pool-cmd"
)

// Labels on user containers and on env images.
const (
	Env        = "io.spawnd.env"         // env name
	LockDigest = "io.spawnd.lock-digest" // the env's lock digest (on a container: at its start)
)

// Labels on env images only.
const (
	SpecChecksum = "io.spawnd.spec-checksum" // the checksum of the spec the lock was made from
	BaseDigest   = "io.spawnd.base-digest"   // the base image's digest
	Plan         = "io.spawnd.plan"          // images.PlanVersion of the spawnd that built it
)

// Lock marks the throw-away containers and stage images of locking; Stage
// names the stage.
const (
	Lock  = "io.spawnd.lock"
	Stage = "io.spawnd.stage" // "lock" on the apt stage image pip is resolved in
)

// Labels tests and benchmarks put on what they make, so a sweep finds it
// even after a timeout or a panic (scripts/sweep removes by them).
const (
	Test        = "io.spawnd.test"        // "1" on everything a test makes
	BenchRaw    = "io.spawnd.bench-raw"   // the raw-floor containers of a benchmark run
	Conformance = "io.spawnd.conformance" // one run of the backend conformance suite
)
