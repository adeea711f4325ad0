package images

import "runtime"

// goArch is the OCI architecture of this machine (the root file systems
// spawnd imports are made here, for here).
func goArch() string { return runtime.GOARCH }
