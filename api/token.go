package api

import (
	"fmt"
	"os"
)

// MinTokenLen is the shortest API token spawnd accepts.
const MinTokenLen = 16

// CheckToken is the rule for an API token, for the daemon, its HTTP edge
// and doctor alike. The error says how to make a good one.
func CheckToken(tok string) error {
	if tok == "" {
		return fmt.Errorf("no API token; generate one with: openssl rand -hex 32")
	}
	if len(tok) < MinTokenLen {
		return fmt.Errorf("the API token is shorter than %d characters; generate one with: openssl rand -hex 32", MinTokenLen)
	}
	return nil
}

// CheckTokenFile is the rule for the file that holds a token: nobody but its
// owner may read it, since the token controls the container engine.
func CheckTokenFile(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%s is readable by others (mode %#o), and the token controls the container engine; fix it: chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	return nil
}
