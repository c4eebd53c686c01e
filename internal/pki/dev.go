package pki

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"
)

// devCAName is the CA DevPKI creates.
const devCAName = "standby-dev-ca"

// renewBefore is how close to expiry DevPKI stops reusing a certificate,
// so that a demo started today does not fail tomorrow.
const renewBefore = 7 * 24 * time.Hour

// DevPKI sets up a CA and one certificate per identity in dir, for `standby
// demo` and tests. It is idempotent: an existing CA is kept, and an existing
// certificate is kept when it was issued by that CA to that identity, covers
// every host and is not about to expire; otherwise it is issued again.
// Concurrent callers (parallel tests, several processes) sharing dir are
// serialised by a lock file.
func DevPKI(dir string, hosts []string, ids ...Identity) (map[Identity]Files, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("development PKI in %s: %w", dir, err)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, fmt.Errorf("development PKI in %s: %w", dir, err)
	}
	defer unlock()

	caCert := filepath.Join(dir, caCertFile)
	if _, err := os.Stat(caCert); os.IsNotExist(err) {
		if err := NewCA(dir, devCAName); err != nil {
			return nil, fmt.Errorf("development PKI in %s: %w", dir, err)
		}
	}
	authority, err := loadCA(dir)
	if err != nil {
		return nil, fmt.Errorf("development PKI in %s: %w", dir, err)
	}

	out := make(map[Identity]Files, len(ids))
	for _, id := range ids {
		certPath, keyPath := leafPaths(dir, id)
		if !reusable(authority, certPath, keyPath, id, hosts) {
			now := time.Now()
			certPEM, keyPEM, err := authority.issue(id, hosts, now.Add(-backdate), now.Add(leafValidity))
			if err != nil {
				return nil, fmt.Errorf("development PKI in %s: issue certificate for %s: %w", dir, id, err)
			}
			if certPath, keyPath, err = writeLeaf(dir, id, certPEM, keyPEM); err != nil {
				return nil, fmt.Errorf("development PKI in %s: issue certificate for %s: %w", dir, id, err)
			}
		}
		out[id] = Files{CA: caCert, Cert: certPath, Key: keyPath}
	}
	return out, nil
}

// reusable reports whether the certificate at certPath can be handed out
// again for id. Any doubt means no: issuing is cheap.
func reusable(authority *ca, certPath, keyPath string, id Identity, hosts []string) bool {
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return false
	}
	cert := pair.Leaf
	if cert.CheckSignatureFrom(authority.cert) != nil {
		return false
	}
	if got, err := identityOf(cert); err != nil || got != id {
		return false
	}
	if time.Until(cert.NotAfter) < renewBefore || time.Now().Before(cert.NotBefore) {
		return false
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			if !slices.ContainsFunc(cert.IPAddresses, ip.Equal) {
				return false
			}
		} else if !slices.Contains(cert.DNSNames, h) {
			return false
		}
	}
	return true
}

// lockDir takes an exclusive lock on dir, released by the returned func.
// flock rather than a lock file created with O_EXCL: the kernel drops the
// lock when a holder dies, so a killed test cannot wedge later runs.
func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
