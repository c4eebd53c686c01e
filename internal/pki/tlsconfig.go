package pki

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Files locates one component's credentials: the CA certificate(s) it
// trusts, its own certificate and its private key, all PEM.
type Files struct {
	CA, Cert, Key string
}

// credentials are Files loaded and cross-checked.
type credentials struct {
	pool *x509.CertPool
	cert tls.Certificate
	self Identity
}

func (f Files) load() (*credentials, error) {
	data, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("read CA certificates: %w", err)
	}
	var cas []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse CA certificate in %s: %w", f.CA, err)
		}
		cas = append(cas, c)
	}
	if len(cas) == 0 {
		return nil, fmt.Errorf("%s holds no PEM CA certificate", f.CA)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}

	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("load certificate %s with key %s: %w", f.Cert, f.Key, err)
	}
	self, err := identityOf(cert.Leaf)
	if err != nil {
		return nil, fmt.Errorf("load certificate %s: %w", f.Cert, err)
	}
	// Checking the signature (not the validity period) catches a
	// certificate paired with the wrong CA file at start-up, where it is
	// obvious, instead of as "unknown authority" on the peer's side.
	// Expiry is left to the peer, which must check it anyway.
	signed := false
	for _, c := range cas {
		if cert.Leaf.CheckSignatureFrom(c) == nil {
			signed = true
			break
		}
	}
	if !signed {
		return nil, fmt.Errorf("certificate %s (%s) was not issued by any CA in %s", f.Cert, self, f.CA)
	}
	return &credentials{pool: pool, cert: cert, self: self}, nil
}

// ServerConfig is the TLS configuration of a listening component. Clients
// must present a certificate from the CA, and their identity must match
// one of allow (a Role or an Identity); anyone else is refused during the
// handshake with an error naming who they are.
func ServerConfig(f Files, allow ...Match) (*tls.Config, error) {
	if len(allow) == 0 {
		return nil, errors.New("server TLS configuration: no peers allowed; name at least one role")
	}
	creds, err := f.load()
	if err != nil {
		return nil, fmt.Errorf("server TLS configuration: %w", err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{creds.cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    creds.pool,
		// VerifyConnection rather than VerifyPeerCertificate: it also runs
		// on resumed sessions, which carry no certificate message.
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := matchPeer(cs, allow)
			if err != nil {
				return fmt.Errorf("refusing TLS client %s: only %s may connect here", id, err)
			}
			return nil
		},
	}, nil
}

// ClientConfig is the TLS configuration for dialling a component at
// serverName (the host name or IP address dialled, which the server's
// certificate must list). The server's identity must match one of expect:
// a Role, or an Identity for one particular server.
func ClientConfig(f Files, serverName string, expect ...Match) (*tls.Config, error) {
	if serverName == "" {
		return nil, errors.New("client TLS configuration: empty server name")
	}
	if len(expect) == 0 {
		return nil, fmt.Errorf("client TLS configuration for %s: no expected server identity; name at least one role", serverName)
	}
	creds, err := f.load()
	if err != nil {
		return nil, fmt.Errorf("client TLS configuration for %s: %w", serverName, err)
	}
	cert := creds.cert
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    creds.pool,
		ServerName: serverName,
		// Send our certificate even when the server names CAs it does not
		// match: the server then says "unknown authority" and the operator
		// learns which CA is wrong, instead of "no certificate provided".
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := matchPeer(cs, expect)
			if err != nil {
				return fmt.Errorf("refusing TLS server %s at %s: expected %s", id, serverName, err)
			}
			return nil
		},
	}, nil
}

// matchPeer returns the peer's identity, and an error when it matches
// none of allow. The error text is written to complete the callers'
// sentences: it lists what was allowed, or says why there is no identity.
func matchPeer(cs tls.ConnectionState, allow []Match) (fmt.Stringer, error) {
	id, err := PeerIdentity(cs)
	if err != nil {
		return unidentified{}, fmt.Errorf("a peer with a standby identity (%w)", err)
	}
	for _, m := range allow {
		if m.match(id) {
			return id, nil
		}
	}
	names := make([]string, len(allow))
	for i, m := range allow {
		names[i] = m.String()
	}
	return id, errors.New(strings.Join(names, " or "))
}

// unidentified stands in for the identity of a peer that has none.
type unidentified struct{}

func (unidentified) String() string { return "(no identity)" }

// PeerIdentity is the identity in the peer's verified certificate. It
// fails on a connection whose peer certificate was not verified against a
// CA, so that an identity is never taken from a certificate nobody checked.
func PeerIdentity(cs tls.ConnectionState) (Identity, error) {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}, errors.New("peer certificate was not verified against a CA")
	}
	id, err := identityOf(cs.VerifiedChains[0][0])
	if err != nil {
		return Identity{}, err
	}
	return id, nil
}
