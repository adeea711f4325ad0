package spawnd

import "sync"

// view is the core's in-memory view: each server it knows (a record:
// what the engine showed, a start or stop in flight, its probes; record.go)
// and the homes an admin action holds. One lock guards both because they
// change together: a start claims its key only while its user's home is
// not being deleted or moved, and an admin action holds a home only while
// the user has no server. Builds (buildTable) and notices (noticeBoard)
// have their own locks; the env table (envTable) and the policy
// (Manager.pol) are read without this one.
//
// Every field is read and written with mu held; nothing that waits on the
// engine or the network runs under it.
type view struct {
	mu       sync.Mutex
	servers  map[key]*record
	homeBusy map[string]string // users whose home is being "deleted" or "moved"
}

func newView() view {
	return view{servers: make(map[key]*record), homeBusy: make(map[string]string)}
}
