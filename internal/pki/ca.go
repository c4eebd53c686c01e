package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// File names inside a CA directory.
const (
	caCertFile = "ca.crt"
	caKeyFile  = "ca.key"
)

// Lifetimes of file-based certificates. Enrollment will issue short-lived
// certificates and renew them; until then a certificate has to outlive the
// deployments and test runs that use it.
const (
	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 365 * 24 * time.Hour
	// backdate tolerates clocks that run behind the issuer's: a component
	// whose clock is a few minutes slow must not see a "not yet valid"
	// certificate right after issue.
	backdate = time.Hour
)

// ca is a loaded certificate authority.
type ca struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// NewCA creates a certificate authority in dir: ca.crt and ca.key (mode
// 0600), an ECDSA P-256 key. It refuses to overwrite an existing CA, because
// replacing a CA silently invalidates every certificate issued from it.
func NewCA(dir string, name string) error {
	id := Identity{Role: RoleCA, Name: name}
	if err := id.Validate(); err != nil {
		return fmt.Errorf("create CA in %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create CA directory %s: %w", dir, err)
	}
	certPath, keyPath := filepath.Join(dir, caCertFile), filepath.Join(dir, caKeyFile)
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("create CA in %s: refusing to overwrite existing %s", dir, p)
		}
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("create CA %q: generate key: %w", name, err)
	}
	serial, err := randomSerial()
	if err != nil {
		return fmt.Errorf("create CA %q: %w", name, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"standby"}},
		URIs:                  []*url.URL{id.URI()},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// Components are issued directly by this CA; an intermediate would
		// be a second key that can mint identities, so none is allowed.
		MaxPathLen:     0,
		MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("create CA %q: self-sign: %w", name, err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return fmt.Errorf("create CA %q: %w", name, err)
	}

	keyFile, err := stage(keyPath, keyPEM, 0o600)
	if err != nil {
		return fmt.Errorf("create CA %q: %w", name, err)
	}
	certFile, err := stage(certPath, encodeCert(der), 0o644)
	if err != nil {
		keyFile.discard()
		return fmt.Errorf("create CA %q: %w", name, err)
	}
	// The key goes first and the certificate last, so that a reader who
	// finds ca.crt can rely on ca.key being complete.
	if err := keyFile.create(); err != nil {
		certFile.discard()
		return fmt.Errorf("create CA %q: %w", name, err)
	}
	if err := certFile.create(); err != nil {
		return fmt.Errorf("create CA %q: %w", name, err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("create CA %q: %w", name, err)
	}
	return nil
}

// Issue signs a certificate for id with the CA in caDir and writes it to
// outDir as <role>-<name>.crt and <role>-<name>.key (mode 0600), replacing
// earlier ones: issuing again is how a certificate is renewed. hosts become
// the DNS and IP SANs that clients check against the address they dialled.
func Issue(caDir, outDir string, id Identity, hosts []string) (certPath, keyPath string, err error) {
	authority, err := loadCA(caDir)
	if err != nil {
		return "", "", fmt.Errorf("issue certificate for %s: %w", id, err)
	}
	now := time.Now()
	certPEM, keyPEM, err := authority.issue(id, hosts, now.Add(-backdate), now.Add(leafValidity))
	if err != nil {
		return "", "", fmt.Errorf("issue certificate for %s: %w", id, err)
	}
	certPath, keyPath, err = writeLeaf(outDir, id, certPEM, keyPEM)
	if err != nil {
		return "", "", fmt.Errorf("issue certificate for %s: %w", id, err)
	}
	return certPath, keyPath, nil
}

// leafPaths are the file names Issue writes for id.
func leafPaths(dir string, id Identity) (certPath, keyPath string) {
	base := filepath.Join(dir, string(id.Role)+"-"+id.Name)
	return base + ".crt", base + ".key"
}

func writeLeaf(outDir string, id Identity, certPEM, keyPEM []byte) (string, string, error) {
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return "", "", fmt.Errorf("create directory %s: %w", outDir, err)
	}
	certPath, keyPath := leafPaths(outDir, id)
	keyFile, err := stage(keyPath, keyPEM, 0o600)
	if err != nil {
		return "", "", err
	}
	certFile, err := stage(certPath, certPEM, 0o644)
	if err != nil {
		keyFile.discard()
		return "", "", err
	}
	// A crash between the two renames leaves a key that does not match the
	// certificate; loading the pair then fails loudly rather than serving
	// the wrong identity.
	if err := keyFile.replace(); err != nil {
		certFile.discard()
		return "", "", err
	}
	if err := certFile.replace(); err != nil {
		return "", "", err
	}
	if err := syncDir(outDir); err != nil {
		return "", "", err
	}
	return certPath, keyPath, nil
}

// issue signs a leaf certificate valid from notBefore to notAfter.
func (c *ca) issue(id Identity, hosts []string, notBefore, notAfter time.Time) (certPEM, keyPEM []byte, err error) {
	if err := id.Validate(); err != nil {
		return nil, nil, err
	}
	if id.Role == RoleCA {
		return nil, nil, errors.New("role \"ca\" is reserved for the CA's own certificate")
	}
	dnsNames, ips, err := splitHosts(hosts)
	if err != nil {
		return nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: id.Name, Organization: []string{"standby"}, OrganizationalUnit: []string{string(id.Role)}},
		URIs:         []*url.URL{id.URI()},
		DNSNames:     dnsNames,
		IPAddresses:  ips,
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		// Every component is a server on one link and a client on another
		// (a process server accepts agents and dials master targets), so
		// one certificate serves both ends.
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return encodeCert(der), keyPEM, nil
}

// splitHosts sorts host names and addresses into the SANs that carry them.
func splitHosts(hosts []string) ([]string, []net.IP, error) {
	var dnsNames []string
	var ips []net.IP
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		if h == "" {
			return nil, nil, errors.New("empty host name")
		}
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
			continue
		}
		if strings.ContainsAny(h, " /:@") {
			return nil, nil, fmt.Errorf("host %q is neither an IP address nor a DNS name", h)
		}
		dnsNames = append(dnsNames, h)
	}
	return dnsNames, ips, nil
}

// loadCA reads the CA in dir and checks that its key belongs to its
// certificate, so that a mixed-up directory fails here and not in the
// middle of a handshake on another machine.
func loadCA(dir string) (*ca, error) {
	cert, err := readCert(filepath.Join(dir, caCertFile))
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("load CA: %s is not a CA certificate", filepath.Join(dir, caCertFile))
	}
	keyPath := filepath.Join(dir, caKeyFile)
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("load CA: %s holds no PEM \"PRIVATE KEY\"", keyPath)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("load CA: parse %s: %w", keyPath, err)
	}
	signer, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("load CA: %s is not a signing key", keyPath)
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("load CA: %s does not belong to %s", keyPath, filepath.Join(dir, caCertFile))
	}
	return &ca{cert: cert, key: signer}, nil
}

// readCert reads the first certificate of a PEM file.
func readCert(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	return cert, nil
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// randomSerial returns a 128-bit serial: unpredictable serials are what
// the CA/Browser forum requires, and they make every certificate distinct
// even when two are issued in the same second.
func randomSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return serial, nil
}
