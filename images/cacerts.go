package images

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
)

// CACertsEnv names PEM files of extra CA certificates for locking and
// fetching, separated by ":" (a company's TLS-intercepting proxy).
const CACertsEnv = "SPAWND_BUILD_CA_CERTS"

// CAFilesFromEnv are the files $SPAWND_BUILD_CA_CERTS names.
func CAFilesFromEnv() []string {
	if v := os.Getenv(CACertsEnv); v != "" {
		return filepath.SplitList(v)
	}
	return nil
}

// ReadCACerts concatenates PEM certificate files (Options.CACerts),
// checking each holds at least one certificate.
func ReadCACerts(files []string) ([]byte, error) {
	var out []byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		if !bytes.Contains(b, []byte("-----BEGIN CERTIFICATE-----")) {
			return nil, fmt.Errorf("%s: no PEM certificate in the file (want -----BEGIN CERTIFICATE-----)", f)
		}
		out = append(out, bytes.TrimSpace(b)...)
		out = append(out, '\n')
	}
	return out, nil
}
