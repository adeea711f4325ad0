package swarm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd/backend"
)

// NodeHomes keeps each user's home on the local disk of one node, at
// <root>/<dir> there, and pins the user's servers to that node. The pin is a
// Swarm config object (spawnd-home-…, labelled with the user and the node's
// ID), so it lives in the swarm's own replicated store: any manager knows
// it, and a daemon that restarts, or moves to another manager, finds it.
//
// The daemon never touches a node's disk itself. Short helper jobs, run as
// root from the env's image with only the capabilities they need, make,
// delete and move homes: the first start of a user runs one on the node
// Swarm picks for it (among those the server's placement allows), which
// then holds the home; Move streams a tar of the home between two helpers
// over the users' overlay network and checks its SHA-256 at both ends.
type NodeHomes struct {
	s       *Swarm
	root    string // homes_root, on every node
	network string // the users' overlay network, which a move crosses

	mu    sync.Mutex
	users map[string]*sync.Mutex // one first start or move of a user at a time
}

var _ interface {
	Ensure(context.Context, backend.HomeSpec) (backend.Home, error)
	Delete(context.Context, backend.HomeSpec) error
	Move(context.Context, backend.HomeSpec, string) (backend.HomeMove, error)
} = (*NodeHomes)(nil)

// NodeHomes returns the node-pinned homes under root on each node; a move
// crosses network (the users' attachable overlay).
func (s *Swarm) NodeHomes(root, network string) *NodeHomes {
	return &NodeHomes{s: s, root: root, network: network, users: map[string]*sync.Mutex{}}
}

// Labels of a home's pin (a Swarm config).
const (
	homeUserLabel = "io.spawnd.home.user"
	homeNodeLabel = "io.spawnd.home.node"
	helperLabel   = "io.spawnd.home.helper"
)

// lock serialises the pin-changing work of one user.
func (n *NodeHomes) lock(user string) func() {
	n.mu.Lock()
	l := n.users[user]
	if l == nil {
		l = &sync.Mutex{}
		n.users[user] = l
	}
	n.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// pinName is the config that pins a user's home (config names are short;
// the user is in a label).
func pinName(h backend.HomeSpec) string {
	sum := sha256.Sum256([]byte(h.Labels[labels.Instance] + "\x00" + h.User))
	return "spawnd-home-" + hex.EncodeToString(sum[:12])
}

// pin is where a user's home is: the config and the node's ID ("" = none yet).
func (n *NodeHomes) pin(ctx context.Context, h backend.HomeSpec) (swarm.Config, string, error) {
	res, err := n.s.cli.ConfigInspect(ctx, pinName(h), client.ConfigInspectOptions{})
	if errdefs.IsNotFound(err) {
		return swarm.Config{}, "", nil
	}
	if err != nil {
		return swarm.Config{}, "", fmt.Errorf("reading where the home of %s is (config %s): %w", h.User, pinName(h), err)
	}
	return res.Config, res.Config.Spec.Labels[homeNodeLabel], nil
}

// Ensure implements the core's HomeStore: the home's node, or a new home on
// a node Swarm picks among those the server may run on.
func (n *NodeHomes) Ensure(ctx context.Context, h backend.HomeSpec) (backend.Home, error) {
	home := backend.Home{Source: n.root + "/" + h.Dir}
	if _, node, err := n.pin(ctx, h); err != nil {
		return backend.Home{}, err
	} else if node != "" {
		// A node that cannot run the server would leave it pending until
		// the deadline, with a reason about placement; say what it is.
		if err := n.nodeUp(ctx, node, "This user's home"); err != nil {
			return backend.Home{}, fmt.Errorf("%w (an admin can move the home: spawnd home move)", err)
		}
		home.Placement = []string{"node.id==" + node}
		return home, nil
	}
	defer n.lock(h.User)()
	if _, node, err := n.pin(ctx, h); err != nil || node != "" { // made while we waited
		home.Placement = []string{"node.id==" + node}
		return home, err
	}
	task, err := n.helper(ctx, h, helperJob{what: "make", placement: h.Placement,
		cmd: []string{"sh", "-euc", makeScript, "sh", h.Dir, fmt.Sprintf("%d:%d", h.UID, h.GID)}}, nil)
	if err != nil {
		return backend.Home{}, err
	}
	labels := maps.Clone(h.Labels)
	labels[homeUserLabel], labels[homeNodeLabel] = h.User, task.NodeID
	if _, err := n.s.cli.ConfigCreate(ctx, client.ConfigCreateOptions{Spec: swarm.ConfigSpec{
		Annotations: swarm.Annotations{Name: pinName(h), Labels: labels}, Data: []byte(h.User)}}); err != nil {
		return backend.Home{}, fmt.Errorf("recording that the home of %s is on node %s: %w", h.User, task.NodeID, err)
	}
	home.Placement = []string{"node.id==" + task.NodeID}
	return home, nil
}

// Delete implements the core's HomeStore: the home is removed on its node,
// then its pin.
func (n *NodeHomes) Delete(ctx context.Context, h backend.HomeSpec) error {
	defer n.lock(h.User)()
	cfg, node, err := n.pin(ctx, h)
	if err != nil {
		return err
	}
	if node == "" {
		return fmt.Errorf("%s has no home on any node: %w", h.User, errdefs.ErrNotFound)
	}
	if err := n.nodeUp(ctx, node, "the home of "+h.User); err != nil {
		return err
	}
	if _, err := n.helper(ctx, h, helperJob{what: "delete", placement: []string{"node.id==" + node},
		cmd: []string{"sh", "-euc", deleteScript, "sh", h.Dir}}, nil); err != nil {
		return err
	}
	if _, err := n.s.cli.ConfigRemove(ctx, cfg.ID, client.ConfigRemoveOptions{}); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("the home of %s is deleted, but not the record of its node (config %s): %w", h.User, cfg.Spec.Name, err)
	}
	return nil
}

// Move implements backend.HomeStore's Move: the home is copied to node (a host
// name or node ID), checked, and the user pinned there; the home keeps a
// renamed copy on the node it left (OldCopy), which only an admin removes.
func (n *NodeHomes) Move(ctx context.Context, h backend.HomeSpec, node string) (backend.HomeMove, error) {
	defer n.lock(h.User)()
	cfg, from, err := n.pin(ctx, h)
	if err != nil {
		return backend.HomeMove{}, err
	}
	if from == "" {
		return backend.HomeMove{}, fmt.Errorf("%s has no home on any node yet (it is made at the first start): %w", h.User, errdefs.ErrNotFound)
	}
	nodes, err := n.s.cli.NodeList(ctx, client.NodeListOptions{})
	if err != nil {
		return backend.HomeMove{}, fmt.Errorf("listing the swarm's nodes: %w", err)
	}
	to, err := findNode(nodes.Items, node)
	if err != nil {
		return backend.HomeMove{}, err
	}
	mv := backend.HomeMove{From: hostOf(nodes.Items, from), To: to.Description.Hostname}
	if to.ID == from {
		return backend.HomeMove{}, fmt.Errorf("the home of %s is already on %s: %w", h.User, mv.To, errdefs.ErrInvalidArgument)
	}
	if err := n.nodeUp(ctx, from, "the home of "+h.User); err != nil {
		return backend.HomeMove{}, err
	}
	if err := n.nodeUp(ctx, to.ID, "the target"); err != nil {
		return backend.HomeMove{}, err
	}

	// The receiver listens on the overlay; once it runs, the sender on the
	// home's node connects to its address there and streams the home. Users'
	// servers share that network and could connect first: the receiver
	// takes only a stream that begins with this move's key.
	keyb := make([]byte, 32)
	if _, err := rand.Read(keyb); err != nil {
		return backend.HomeMove{}, fmt.Errorf("making the move's key: %w", err)
	}
	keyEnv := []string{"SPAWND_MOVE_KEY=" + hex.EncodeToString(keyb)}
	recvCtx, cancelRecv := context.WithCancel(ctx)
	defer cancelRecv()
	sendCtx, cancelSend := context.WithCancel(ctx)
	defer cancelSend()
	sent := make(chan error, 1)
	var sentOut string
	oldCopy := fmt.Sprintf(".%s.moved-%s", h.Dir, time.Now().UTC().Format("20060102T150405Z"))
	started := false
	_, rerr := n.helper(recvCtx, h, helperJob{what: "receive", placement: []string{"node.id==" + to.ID}, overlay: true, env: keyEnv,
		cmd: []string{"python3", "-c", receiveScript, h.Dir, strconv.Itoa(movePort)}},
		func(t swarm.Task) {
			started = true
			addr := overlayAddr(t, n.network)
			go func() {
				if addr == "" {
					sent <- fmt.Errorf("the receiving helper on %s has no address on network %s", mv.To, n.network)
					cancelRecv()
					return
				}
				_, err := n.helper(sendCtx, h, helperJob{what: "send", placement: []string{"node.id==" + from}, overlay: true, env: keyEnv,
					cmd: []string{"python3", "-c", sendScript, h.Dir, addr, strconv.Itoa(movePort), oldCopy}, stdout: &sentOut}, nil)
				if err != nil && !isExit(err, 43) && !isExit(err, 44) {
					cancelRecv() // the receiver waits for nobody (after 43 it discards its copy and ends)
				}
				sent <- err
			}()
		})
	if rerr != nil {
		cancelSend()
	}
	var serr error
	if started {
		serr = <-sent
	}
	switch {
	case isExit(serr, 43):
		return backend.HomeMove{}, fmt.Errorf("moving the home of %s from %s to %s: %w", h.User, mv.From, mv.To, serr)
	case serr != nil && !isExit(serr, 44) && (rerr == nil || errors.Is(rerr, context.Canceled)):
		return backend.HomeMove{}, fmt.Errorf("moving the home of %s from %s to %s: %w", h.User, mv.From, mv.To, serr)
	case rerr != nil:
		return backend.HomeMove{}, fmt.Errorf("moving the home of %s from %s to %s: %w", h.User, mv.From, mv.To, rerr)
	case isExit(serr, 44):
		mv.OldCopy = "(not renamed: still " + h.Dir + ")"
	default:
		mv.OldCopy = oldCopy
	}
	// The sender printed what both ends agreed on.
	for _, line := range strings.Split(sentOut, "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "OK" {
			mv.SHA256 = f[1]
			mv.Bytes, _ = strconv.ParseInt(f[2], 10, 64)
		}
	}
	spec := cfg.Spec
	spec.Labels = maps.Clone(spec.Labels)
	spec.Labels[homeNodeLabel] = to.ID
	if _, err := n.s.cli.ConfigUpdate(ctx, cfg.ID, client.ConfigUpdateOptions{Version: cfg.Version, Spec: spec}); err != nil {
		return mv, fmt.Errorf("the home of %s is copied to %s, but its record still names %s (config %s): %w", h.User, mv.To, mv.From, cfg.Spec.Name, err)
	}
	return mv, nil
}

// isExit reports whether err is a helper's exit with code.
func isExit(err error, code int) bool {
	var e *helperExit
	return errors.As(err, &e) && e.code == code
}

// movePort is where a move's receiving helper listens on the overlay.
const movePort = 7077

// findNode finds a node by ID, unique ID prefix or host name.
func findNode(nodes []swarm.Node, want string) (swarm.Node, error) {
	var byHost []swarm.Node
	var byPrefix []swarm.Node
	for _, nd := range nodes {
		switch {
		case nd.ID == want:
			return nd, nil
		case nd.Description.Hostname == want:
			byHost = append(byHost, nd)
		case want != "" && strings.HasPrefix(nd.ID, want):
			byPrefix = append(byPrefix, nd)
		}
	}
	if len(byHost) == 1 {
		return byHost[0], nil
	}
	if len(byHost) > 1 {
		return swarm.Node{}, fmt.Errorf("%d nodes are called %q; give the node's ID (docker node ls): %w", len(byHost), want, errdefs.ErrInvalidArgument)
	}
	if len(byPrefix) == 1 {
		return byPrefix[0], nil
	}
	var names []string
	for _, nd := range nodes {
		names = append(names, nd.Description.Hostname)
	}
	return swarm.Node{}, fmt.Errorf("no node of the swarm is %q; the nodes are %s: %w", want, strings.Join(names, ", "), errdefs.ErrInvalidArgument)
}

func hostOf(nodes []swarm.Node, id string) string {
	for _, nd := range nodes {
		if nd.ID == id {
			return nd.Description.Hostname
		}
	}
	return id
}

// nodeUp refuses a node that cannot run a helper now, saying why.
func (n *NodeHomes) nodeUp(ctx context.Context, id, what string) error {
	nodes, err := n.s.nodes(ctx)
	if err != nil {
		return err
	}
	nd, ok := nodes[id]
	switch {
	case !ok:
		return fmt.Errorf("%s is on node %s, which has left the swarm; an admin must restore it from that machine's disk: %w", what, id, errdefs.ErrUnavailable)
	case nd.down:
		return fmt.Errorf("%s is on %s (%s), which is down; bring it back, then try again: %w", what, nd.host, nd.addr, errdefs.ErrUnavailable)
	case nd.drained:
		return fmt.Errorf("%s is on %s (%s), which is drained; make it active (docker node update --availability active) or move the home: %w", what, nd.host, nd.addr, errdefs.ErrUnavailable)
	}
	return nil
}

// overlayAddr is a task's address on network.
func overlayAddr(t swarm.Task, network string) string {
	for _, na := range t.NetworksAttachments {
		if na.Network.Spec.Name == network && len(na.Addresses) > 0 {
			return na.Addresses[0].Addr().String()
		}
	}
	return ""
}

// helperExit is a helper that ended with a non-zero status.
type helperExit struct {
	what string
	code int
	node string
}

func (e *helperExit) Error() string {
	if x, ok := helperExits[e.code]; ok {
		return fmt.Sprintf("%s on %s: %s", e.what, e.node, x.words)
	}
	return fmt.Sprintf("%s on %s: the helper exited with status %d (docker service logs of the helper, or the node's daemon log, say why)", e.what, e.node, e.code)
}

// Is classifies a helper's failure for the core.
func (e *helperExit) Is(target error) bool {
	x, ok := helperExits[e.code]
	return ok && x.kind != nil && target == x.kind
}

// helperExits is the one table of the helpers' exit statuses
// (helpers/*.sh exit N, helpers/*.py sys.exit(N)): what each means, in
// words that say what to fix, and its errdefs class for the core (nil:
// unavailable, the default). TestHelperExitsAreOneTable keeps the scripts
// and this table the same set.
var helperExits = map[int]struct {
	words string
	kind  error
}{
	20: {"homes_root there is not owned by root; fix it on that node: chown root:root <homes_root>", nil},
	21: {"homes_root there is writable by group or others; fix it on that node: chmod 755 <homes_root>", nil},
	22: {"the home is a symlink there; an admin must replace it with a directory", errdefs.ErrConflict},
	23: {"the home is not a directory there; an admin must move it away", errdefs.ErrConflict},
	24: {"the user has no home there", errdefs.ErrNotFound},
	30: {"a home of that name is already on the target node; an admin must move it away first", errdefs.ErrConflict},
	31: {"unpacking the home on the target node failed (is its disk full?); nothing was changed on the home's node", nil},
	32: {"the home never arrived from the sending node (can the two nodes reach each other over the users' overlay network?)", nil},
	33: {"the sending node refused the copy (what arrived differed from what was sent); the copy was discarded and nothing was changed", nil},
	40: {"the user has no home on the node the record names; an admin must find it", errdefs.ErrNotFound},
	41: {"the sending node could not reach the receiving node over the users' overlay network", nil},
	42: {"reading the home on its node failed; nothing was changed", nil},
	43: {"the two nodes disagree on what crossed (SHA-256 or size); the copy on the target was discarded and the home stays where it was", nil},
	44: {"the home was copied and checked, but its old copy could not be renamed", nil},
	45: {"the receiving node did not confirm that it put the checked copy in place; the home stays where it was, and a copy may be on the target (look before moving again)", nil},
}

// helper runs one home helper (a one-task Swarm job, as root from the env's
// image, with homes_root mounted at /homes) on a node the constraints
// allow, and waits for it to end. onRunning, when set, hears its task when
// it runs. The job is removed at the end, whatever happened.
// helperJob is one helper: what it does (for names and errors), where, its
// command and environment, and whether it joins the users' overlay.
type helperJob struct {
	what                string
	placement, cmd, env []string
	overlay             bool
	stdout              *string // when set, gets the helper's output once it completes
}

func (n *NodeHomes) helper(ctx context.Context, h backend.HomeSpec, job helperJob, onRunning func(swarm.Task)) (swarm.Task, error) {
	what, placement := job.what, job.placement
	if h.Image == "" {
		return swarm.Task{}, fmt.Errorf("the home helpers run from the default env's image, and it is not configured: %w", errdefs.ErrFailedPrecondition)
	}
	image, err := n.s.Pin(ctx, h.Image)
	if err != nil {
		return swarm.Task{}, err
	}
	auth, err := n.s.registryAuth(image)
	if err != nil {
		return swarm.Task{}, fmt.Errorf("registry credentials for %s: %w", image, err)
	}
	labels := maps.Clone(h.Labels)
	labels[helperLabel], labels[homeUserLabel] = what, h.User
	one, yes := uint64(1), true
	spec := swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: "spawnd-home-" + what + "-" + randomSuffix(), Labels: labels},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{Image: image, Labels: labels, Command: job.cmd, Env: job.env, User: "0:0", Dir: "/homes",
				Mounts:         []mount.Mount{{Type: mount.TypeBind, Source: n.root, Target: "/homes"}},
				CapabilityDrop: []string{"ALL"},
				CapabilityAdd:  []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER"},
				Init:           &yes},
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone},
			Placement:     &swarm.Placement{Constraints: placement},
			Resources:     &swarm.ResourceRequirements{Limits: &swarm.Limit{MemoryBytes: 256 << 20, Pids: 64}},
		},
		Mode: swarm.ServiceMode{ReplicatedJob: &swarm.ReplicatedJob{MaxConcurrent: &one, TotalCompletions: &one}},
	}
	if job.overlay {
		spec.TaskTemplate.Networks = []swarm.NetworkAttachmentConfig{{Target: n.network}}
	}
	res, err := n.s.cli.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: spec, EncodedRegistryAuth: auth})
	if err != nil {
		return swarm.Task{}, fmt.Errorf("creating the home helper (%s): %w", what, err)
	}
	defer n.s.removeQuietly(ctx, res.ID)
	f := client.Filters{}
	f.Add("service", res.ID)
	pendingSince, told := time.Time{}, false
	var last swarm.Task
	err = until(ctx, every(100*time.Millisecond), func() (bool, error) {
		tasks, err := n.s.cli.TaskList(ctx, client.TaskListOptions{Filters: f})
		if err != nil {
			return false, fmt.Errorf("following the home helper (%s): %w", what, err)
		}
		if len(tasks.Items) == 0 {
			return false, nil
		}
		t := tasks.Items[0]
		last = t
		switch t.Status.State {
		case swarm.TaskStateComplete:
			if job.stdout != nil {
				out, err := n.s.Logs(ctx, res.ID, 50)
				if err != nil {
					return false, fmt.Errorf("the home helper (%s) of %s completed, and its output could not be read: %w", what, h.User, err)
				}
				*job.stdout = out
			}
			return true, nil
		case swarm.TaskStateFailed, swarm.TaskStateRejected, swarm.TaskStateShutdown, swarm.TaskStateOrphaned, swarm.TaskStateRemove:
			host := t.NodeID
			if nodes, err := n.s.nodes(ctx); err == nil && nodes[t.NodeID].host != "" {
				host = nodes[t.NodeID].host
			}
			if cs := t.Status.ContainerStatus; cs != nil && cs.ExitCode != 0 {
				return false, &helperExit{what: "the home helper (" + what + ") of " + h.User, code: cs.ExitCode, node: host}
			}
			return false, fmt.Errorf("the home helper (%s) of %s on %s: %s: %w", what, h.User, host, t.Status.Err, classify(t.Status.Err))
		case swarm.TaskStateRunning:
			if onRunning != nil && !told {
				told = true
				onRunning(t)
			}
		case swarm.TaskStatePending, swarm.TaskStateNew, swarm.TaskStateAllocated:
			if pendingSince.IsZero() {
				pendingSince = time.Now()
			} else if time.Since(pendingSince) > n.s.opt.PendingTimeout {
				return false, &backend.Unplaceable{Reason: explainPending(t.Status.Err, backend.ContainerSpec{Placement: placement}),
					Err: fmt.Errorf("the home helper (%s) of %s waited %s for a node: %s", what, h.User, n.s.opt.PendingTimeout, t.Status.Err)}
			}
		}
		return false, nil
	})
	switch {
	case err == nil:
		return last, nil
	case err == ctx.Err():
		return swarm.Task{}, fmt.Errorf("the home helper (%s) of %s: %w", what, h.User, err)
	}
	return last, err
}

func randomSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// makeScript makes the home ($1, owned by $2) under /homes unless it is
// there; it checks homes_root as the daemon does on one host.
//
//go:embed helpers/make.sh
var makeScript string

// deleteScript removes the home $1 under /homes (a symlink: the link only).
//
//go:embed helpers/delete.sh
var deleteScript string

// The move's wire, sender to receiver: the move's key, then the home as a
// tar stream in frames (a 4-byte big-endian length, then that many bytes; a
// zero length ends it). Back: "GOT <sha256> <bytes>\n" once the receiver
// has unpacked the stream under a hidden name. The sender compares that
// with what it sent and answers "COMMIT\n" or "ABORT\n"; only on COMMIT
// does the copy take the user's name on the target ("DONE\n" back), and
// only after DONE is the sender's copy renamed aside. A copy that differs
// in flight never holds the user's name anywhere but on the home's node.

// receiveScript takes a home over TCP (argv: name, port): the first
// connection that opens with $SPAWND_MOVE_KEY brings the framed tar stream,
// unpacked under a hidden name and put in place only when the sender, told
// the SHA-256 and size of what arrived, commits. Other connections are
// dropped unread.
//
//go:embed helpers/receive.py
var receiveScript string

// sendScript streams the home (argv: name, host, port, old name) in frames,
// compares what the receiver says arrived with what was sent, commits or
// aborts, and renames the home here to the old name once the receiver has
// put its copy in place. It prints "OK <sha256> <bytes>".
//
//go:embed helpers/send.py
var sendScript string
