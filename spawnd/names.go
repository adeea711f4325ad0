package spawnd

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"unicode"
	"unicode/utf8"
)

// HomeScheme names the escaping scheme that turns a user name into a home
// directory and container name. It is stored on every container
// (io.spawnd.home-scheme) and must never change silently: a new scheme gets a
// new name and a migration, so no user is cut off from their data.
const HomeScheme = "v1"

// MaxNameBytes bounds user and server names, as JupyterHub does.
const MaxNameBytes = 255

// maxEscaped bounds an escaped name so that it fits a file name (255 bytes)
// and a container name with room to spare.
const maxEscaped = 120

// ValidateUser checks a JupyterHub user name: not empty, at most 255 bytes,
// valid UTF-8, no NUL or other control characters. Everything else (unicode,
// '@', '.', '/', upper case) is valid and is escaped, not rejected.
func ValidateUser(name string) error {
	if name == "" {
		return errorf(ErrInvalid, "user name is empty")
	}
	return validateName("user name", name)
}

// ValidateServerName checks a named-server name; "" is the default server.
func ValidateServerName(name string) error {
	return validateName("server name", name)
}

func validateName(what, name string) error {
	if len(name) > MaxNameBytes {
		return errorf(ErrInvalid, "%s is %d bytes long; at most %d are allowed", what, len(name), MaxNameBytes)
	}
	if !utf8.ValidString(name) {
		return errorf(ErrInvalid, "%s is not valid UTF-8", what)
	}
	for i, r := range name {
		if unicode.IsControl(r) {
			return errorf(ErrInvalid, "%s contains control character %U at byte %d; remove it", what, r, i)
		}
	}
	return nil
}

// Escape maps a name to a string of [a-z0-9-] that is safe as a file name, in
// a container name and in a DNS label, under scheme v1:
//
//   - a-z and 0-9 stay as they are;
//   - every other byte becomes '-' and two lower-case hex digits ("A" -> "-41",
//     "-" -> "-2d"), so upper and lower case never meet, even on a
//     case-insensitive file system;
//   - a result longer than 120 bytes is cut at an escape boundary near 54
//     bytes and followed by "--" and the SHA-256 of the whole name.
//
// The map is injective: a plain result never holds "--" (every '-' starts an
// escape followed by two hex digits), a hashed one always does, and two
// hashed results differ unless SHA-256 collides. The result never contains
// '.', '/' or '_', so it can't name a parent directory and can be joined to
// other escaped names with '_'.
func Escape(name string) string {
	var b strings.Builder
	b.Grow(len(name))
	for i := 0; i < len(name); i++ {
		c := name[i]
		if (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') {
			b.WriteByte(c)
			continue
		}
		const hexdigits = "0123456789abcdef"
		b.WriteByte('-')
		b.WriteByte(hexdigits[c>>4])
		b.WriteByte(hexdigits[c&0x0f])
	}
	s := b.String()
	if len(s) <= maxEscaped {
		return s
	}
	cut := 54
	// Do not cut inside an escape: back up to the '-' that starts it.
	for k := cut - 1; k >= cut-2 && k >= 0; k-- {
		if s[k] == '-' {
			cut = k
			break
		}
	}
	sum := sha256.Sum256([]byte(name))
	return s[:cut] + "--" + hex.EncodeToString(sum[:])
}

// ContainerName is the deterministic engine name of a user's server:
// "spawnd-<instance>-<user>" or "spawnd-<instance>-<user>_<server>".
// Two different (user, server) pairs never share a name.
func ContainerName(instance, user, server string) string {
	n := "spawnd-" + instance + "-" + Escape(user)
	if server != "" {
		n += "_" + Escape(server)
	}
	return n
}
