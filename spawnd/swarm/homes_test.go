package swarm

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"

	"github.com/spawnd/spawnd/internal/testenv"
)

// TestMoveHelpers runs the move's two helper scripts as they run on the
// nodes (python3 and GNU tar, here on this machine, in a directory standing
// for homes_root): a connection without the move's key is dropped and
// changes nothing; the sender's stream arrives whole, both ends agree on its
// SHA-256, the home is in place under its name and the sender's copy is
// renamed; a target that already holds the home is refused (30).
func TestMoveHelpers(t *testing.T) {
	for _, bin := range []string{"python3", "tar"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is not on PATH: %v", bin, err)
		}
	}
	src, dst := t.TempDir(), t.TempDir()
	home := filepath.Join(src, "ann")
	if err := os.MkdirAll(filepath.Join(home, "sub dir"), 0o700); err != nil {
		t.Fatal(err)
	}
	data := []byte{0, 1, 2, 255, '\n'}
	if err := os.WriteFile(filepath.Join(home, "sub dir", "data.bin"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	port := freePort(t)
	key := strings.Repeat("ab", 32)
	recv := exec.CommandContext(ctx, "python3", "-c", receiveScript, "ann", strconv.Itoa(port))
	recv.Dir, recv.Env = dst, []string{"SPAWND_MOVE_KEY=" + key}
	var recvOut bytes.Buffer
	recv.Stdout, recv.Stderr = &recvOut, &recvOut
	if err := recv.Start(); err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	// A server on the overlay that connects first, with a wrong key and a
	// stream of its own: dropped.
	var c net.Conn
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var err error
		if c, err = net.Dial("tcp", addr); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the receiver never listened: %v\n%s", err, recvOut.String())
		}
	}
	_, _ = c.Write([]byte(strings.Repeat("00", 32) + "not a tar stream"))
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, _ := c.Read(make([]byte, 64)); n != 0 {
		t.Errorf("the receiver answered a connection without the key")
	}
	c.Close()

	send := exec.CommandContext(ctx, "python3", "-c", sendScript, "ann", "127.0.0.1", strconv.Itoa(port), ".ann.moved-1")
	send.Dir, send.Env = src, []string{"SPAWND_MOVE_KEY=" + key}
	out, err := send.CombinedOutput()
	if err != nil {
		t.Fatalf("sender: %v\n%s", err, out)
	}
	if err := recv.Wait(); err != nil {
		t.Fatalf("receiver: %v\n%s", err, recvOut.String())
	}
	f := strings.Fields(string(out))
	if len(f) != 3 || f[0] != "OK" || len(f[1]) != 64 || f[2] == "0" {
		t.Fatalf("the sender printed %q; want OK <sha256> <bytes>", out)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "ann", "sub dir", "data.bin")); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("the moved file: %v %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(dst, "ann")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("the moved home's mode: %v %v; want 0700 as it was", fi.Mode(), err)
	}
	if _, err := os.Stat(filepath.Join(src, ".ann.moved-1", "sub dir", "data.bin")); err != nil {
		t.Errorf("the old copy was not kept under its new name: %v", err)
	}
	if _, err := os.Lstat(home); err == nil {
		t.Errorf("the old copy still has the home's name")
	}
	if left, _ := filepath.Glob(filepath.Join(dst, ".*")); len(left) != 0 {
		t.Errorf("the receiver left %v", left)
	}

	// The target has the home now: a second receive there refuses.
	again := exec.CommandContext(ctx, "python3", "-c", receiveScript, "ann", strconv.Itoa(freePort(t)))
	again.Dir, again.Env = dst, []string{"SPAWND_MOVE_KEY=" + key}
	if err := again.Run(); err == nil || again.ProcessState.ExitCode() != 30 {
		t.Errorf("receiving onto an existing home: %v; want exit 30 (%s)", err, helperExits[30].words)
	}
}

func freePort(t *testing.T) int { return testenv.FreePort(t) }

// TestFindNode is how `spawnd home move --to` names a node.
func TestFindNode(t *testing.T) {
	node := func(id, host string) swarm.Node {
		return swarm.Node{ID: id, Description: swarm.NodeDescription{Hostname: host}}
	}
	nodes := []swarm.Node{node("abc123", "a"), node("abd456", "b"), node("xyz789", "twin"), node("xyw000", "twin")}
	for _, tc := range []struct {
		want, id, err string
	}{
		{"abc123", "abc123", ""},
		{"a", "abc123", ""},
		{"abd", "abd456", ""},
		{"ab", "", "no node of the swarm"},
		{"twin", "", "2 nodes are called"},
		{"xyw000", "xyw000", ""},
		{"nope", "", "the nodes are a, b, twin, twin"},
	} {
		got, err := findNode(nodes, tc.want)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("findNode(%q) = %v, %v; want an error with %q", tc.want, got.ID, err, tc.err)
			}
			continue
		}
		if err != nil || got.ID != tc.id {
			t.Errorf("findNode(%q) = %q, %v; want %q", tc.want, got.ID, err, tc.id)
		}
	}
}

// TestMoveRefusesACopyCorruptedInFlight puts a relay between the move's two
// helper scripts that flips one byte of a file's contents on the way (a
// stand-in for a faulty link or disk): the sender sees that what arrived
// differs and aborts (43), the receiver discards its copy (33), the target
// has no home of that name and nothing hidden left, and the home on its
// node is untouched and keeps its name. Before the two-phase commit, the
// receiver put the copy in place before the sender compared hashes.
func TestMoveRefusesACopyCorruptedInFlight(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	home := filepath.Join(src, "bea")
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("a"), 256<<10)
	if err := os.WriteFile(filepath.Join(home, "notebook.ipynb"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	recvPort := freePort(t)
	key := strings.Repeat("cd", 32)
	recv := exec.CommandContext(ctx, "python3", "-c", receiveScript, "bea", strconv.Itoa(recvPort))
	recv.Dir, recv.Env = dst, []string{"SPAWND_MOVE_KEY=" + key}
	var recvOut bytes.Buffer
	recv.Stdout, recv.Stderr = &recvOut, &recvOut
	if err := recv.Start(); err != nil {
		t.Fatal(err)
	}

	relay, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	flipped := make(chan bool, 1)
	go func() {
		in, err := relay.Accept()
		if err != nil {
			flipped <- false
			return
		}
		defer in.Close()
		var out net.Conn
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if out, err = net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(recvPort))); err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			flipped <- false
			return
		}
		defer out.Close()
		go func() { _, _ = io.Copy(in, out) }() // the receiver's answers, as they are
		// The sender's stream, with one 'a' deep inside the file (eight in
		// a row: never a frame's length) turned into a 'b'.
		buf, seen, done := make([]byte, 32<<10), 0, false
		for {
			n, err := in.Read(buf)
			if n > 0 {
				if !done && seen+n > 128<<10 {
					if i := bytes.Index(buf[:n], []byte("aaaaaaaa")); i >= 0 {
						buf[i+4], done = 'b', true
					}
				}
				seen += n
				if _, werr := out.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		flipped <- done
	}()

	_, relayPort, _ := net.SplitHostPort(relay.Addr().String())
	send := exec.CommandContext(ctx, "python3", "-c", sendScript, "bea", "127.0.0.1", relayPort, ".bea.moved-1")
	send.Dir, send.Env = src, []string{"SPAWND_MOVE_KEY=" + key}
	out, err := send.CombinedOutput()
	if code := send.ProcessState.ExitCode(); code != 43 {
		t.Fatalf("sender over a corrupting link: %v, exit %d; want 43 (%s)\n%s", err, code, helperExits[43].words, out)
	}
	if err := recv.Wait(); recv.ProcessState.ExitCode() != 33 {
		t.Fatalf("receiver over a corrupting link: %v; want exit 33 (%s)\n%s", err, helperExits[33].words, recvOut.String())
	}
	if !<-flipped {
		t.Fatal("the relay never flipped a byte: the test proved nothing")
	}
	if _, err := os.Lstat(filepath.Join(dst, "bea")); err == nil {
		t.Error("the corrupted copy took the user's name on the target")
	}
	if left, _ := filepath.Glob(filepath.Join(dst, ".*")); len(left) != 0 {
		t.Errorf("the receiver left %v", left)
	}
	if b, err := os.ReadFile(filepath.Join(home, "notebook.ipynb")); err != nil || !bytes.Equal(b, data) {
		t.Errorf("the home on its node changed: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(src, ".bea.moved-1")); err == nil {
		t.Error("the home on its node was renamed aside after a refused move")
	}
}
