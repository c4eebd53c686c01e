// Package pki gives every standby component a certificate and every link
// mutual TLS 1.3 that checks who is on the other end.
//
// A component's identity is its role plus its name. It travels in the
// certificate as a URI SAN "standby://<role>/<name>" because a URI cannot be
// confused with a host name: DNS and IP SANs stay free to say where a
// component listens, while the URI says what it is. Authorisation decisions
// (a master target talks only to process servers, an agent writes only its
// own machine's disks) are made on that identity, never on addresses.
package pki

import (
	"crypto/x509"
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// Role is the kind of component a certificate was issued to.
type Role string

// The roles of DESIGN.md. RoleCA marks the certificate authority's own
// certificate, so that a CA certificate can never pass as a component.
const (
	RoleAgent         Role = "agent"
	RoleProcessServer Role = "process-server"
	RoleMasterTarget  Role = "master-target"
	RoleConfigServer  Role = "config-server"
	RoleCA            Role = "ca"
)

// uriScheme is the scheme of the URI SAN that carries an Identity.
const uriScheme = "standby"

// namePattern keeps names usable unescaped in a URI path and a file name:
// machine names are host names in practice, and anything stranger would have
// to be escaped differently in each place, which is where mismatches hide.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$`)

// Valid reports whether r is one of the known roles.
func (r Role) Valid() bool {
	switch r {
	case RoleAgent, RoleProcessServer, RoleMasterTarget, RoleConfigServer, RoleCA:
		return true
	}
	return false
}

func (r Role) String() string { return string(r) }

func (r Role) match(id Identity) bool { return id.Role == r }

// Identity names one component: an agent's Name is its machine's name.
type Identity struct {
	Role Role
	Name string
}

// String is the form used in log lines and error messages: "agent/web01".
// An empty Name, which only a Match can have, prints as "*".
func (id Identity) String() string {
	if id.Name == "" {
		return string(id.Role) + "/*"
	}
	return string(id.Role) + "/" + id.Name
}

// Validate reports why id cannot be put in a certificate, if it cannot.
func (id Identity) Validate() error {
	if !id.Role.Valid() {
		return fmt.Errorf("identity %q: unknown role %q", id.String(), id.Role)
	}
	if !namePattern.MatchString(id.Name) {
		return fmt.Errorf("identity %q: name must be 1-253 characters of letters, digits, '.', '_' or '-', starting with a letter or digit", id.String())
	}
	return nil
}

// URI is the SAN that carries id in a certificate.
func (id Identity) URI() *url.URL {
	return &url.URL{Scheme: uriScheme, Host: string(id.Role), Path: "/" + id.Name}
}

// match lets an Identity stand for exactly one peer; the zero Name would
// never be issued, so it is treated as "any name of this role" rather than
// "nobody", which is what a caller writing Identity{Role: r} means.
func (id Identity) match(peer Identity) bool {
	return peer.Role == id.Role && (id.Name == "" || peer.Name == id.Name)
}

// Match selects the peers a link accepts. Role accepts every component of
// that role; Identity accepts one component (or, with an empty Name, every
// component of its role).
type Match interface {
	match(Identity) bool
	String() string
}

// parseIdentityURI decodes the standby URI SAN.
func parseIdentityURI(u *url.URL) (Identity, error) {
	name, ok := strings.CutPrefix(u.Path, "/")
	if !ok || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Port() != "" {
		return Identity{}, fmt.Errorf("malformed identity URI %q", u.String())
	}
	id := Identity{Role: Role(u.Host), Name: name}
	if err := id.Validate(); err != nil {
		return Identity{}, fmt.Errorf("identity URI %q: %w", u.String(), err)
	}
	return id, nil
}

// identityOf reads the identity out of a certificate. Exactly one standby
// URI is required: with two, which one the peer "is" would depend on which
// the reader looked at first.
func identityOf(cert *x509.Certificate) (Identity, error) {
	var found []Identity
	for _, u := range cert.URIs {
		if u.Scheme != uriScheme {
			continue
		}
		id, err := parseIdentityURI(u)
		if err != nil {
			return Identity{}, fmt.Errorf("certificate %q: %w", cert.Subject.CommonName, err)
		}
		found = append(found, id)
	}
	switch len(found) {
	case 0:
		return Identity{}, fmt.Errorf("certificate %q (serial %x) carries no standby identity (no %s:// URI SAN); it was not issued by standby's PKI", cert.Subject.CommonName, cert.SerialNumber, uriScheme)
	case 1:
		return found[0], nil
	default:
		return Identity{}, fmt.Errorf("certificate %q carries %d standby identities; exactly one is allowed", cert.Subject.CommonName, len(found))
	}
}
