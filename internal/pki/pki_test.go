package pki

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	agent = Identity{Role: RoleAgent, Name: "web01"}
	ps1   = Identity{Role: RoleProcessServer, Name: "ps1"}
	mt1   = Identity{Role: RoleMasterTarget, Name: "mt1"}
)

var loopbackHosts = []string{"127.0.0.1", "localhost"}

// outcome is what each end of a handshake saw.
type outcome struct {
	serverErr, clientErr   error
	serverSaw, clientSaw   Identity
	serverData, clientData string
}

// exchange runs a real TLS handshake over loopback TCP and, if both ends
// agree, one line of application data each way. In TLS 1.3 the client
// finishes its handshake before the server has judged the client's
// certificate, so a refusal reaches the client on its first read: the
// client therefore always reads before reporting.
func exchange(t *testing.T, srv, cli *tls.Config) outcome {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen on loopback: %v", err)
	}
	defer ln.Close()

	var out outcome
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			out.serverErr = err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Server(c, srv)
		if err := tc.Handshake(); err != nil {
			out.serverErr = err
			return
		}
		out.serverSaw, out.serverErr = PeerIdentity(tc.ConnectionState())
		if out.serverErr != nil {
			return
		}
		line, err := bufio.NewReader(tc).ReadString('\n')
		if err != nil {
			out.serverErr = err
			return
		}
		out.serverData = strings.TrimSpace(line)
		_, out.serverErr = tc.Write([]byte("hello " + out.serverSaw.String() + "\n"))
	}()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial loopback: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(c, cli)
	out.clientErr = func() error {
		if err := tc.Handshake(); err != nil {
			return err
		}
		id, err := PeerIdentity(tc.ConnectionState())
		if err != nil {
			return err
		}
		out.clientSaw = id
		if _, err := tc.Write([]byte("ping\n")); err != nil {
			return err
		}
		line, err := bufio.NewReader(tc).ReadString('\n')
		if err != nil {
			return err
		}
		out.clientData = strings.TrimSpace(line)
		return nil
	}()
	c.Close()
	wg.Wait()
	return out
}

func mustServer(t *testing.T, f Files, allow ...Match) *tls.Config {
	t.Helper()
	cfg, err := ServerConfig(f, allow...)
	if err != nil {
		t.Fatalf("ServerConfig: %v", err)
	}
	return cfg
}

func mustClient(t *testing.T, f Files, serverName string, expect ...Match) *tls.Config {
	t.Helper()
	cfg, err := ClientConfig(f, serverName, expect...)
	if err != nil {
		t.Fatalf("ClientConfig: %v", err)
	}
	return cfg
}

func devPKI(t *testing.T, ids ...Identity) map[Identity]Files {
	t.Helper()
	files, err := DevPKI(t.TempDir(), loopbackHosts, ids...)
	if err != nil {
		t.Fatalf("DevPKI: %v", err)
	}
	return files
}

func wantErrContains(t *testing.T, side string, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: handshake succeeded, want an error containing %q", side, parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("%s error %q does not contain %q", side, err, p)
		}
	}
}

func TestMutualTLSIdentifiesBothEnds(t *testing.T) {
	files := devPKI(t, agent, ps1)
	for _, serverName := range []string{"127.0.0.1", "localhost"} {
		t.Run(serverName, func(t *testing.T) {
			out := exchange(t,
				mustServer(t, files[ps1], RoleAgent),
				mustClient(t, files[agent], serverName, RoleProcessServer))
			if out.serverErr != nil || out.clientErr != nil {
				t.Fatalf("handshake failed: server: %v; client: %v", out.serverErr, out.clientErr)
			}
			if out.serverSaw != agent {
				t.Errorf("server saw peer %v, want %v", out.serverSaw, agent)
			}
			if out.clientSaw != ps1 {
				t.Errorf("client saw peer %v, want %v", out.clientSaw, ps1)
			}
			if out.serverData != "ping" || out.clientData != "hello agent/web01" {
				t.Errorf("application data: server got %q, client got %q", out.serverData, out.clientData)
			}
		})
	}
}

func TestConnectionIsTLS13(t *testing.T) {
	files := devPKI(t, agent, ps1)
	cli := mustClient(t, files[agent], "127.0.0.1", RoleProcessServer)
	cli.MinVersion, cli.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	out := exchange(t, mustServer(t, files[ps1], RoleAgent), cli)
	wantErrContains(t, "server", out.serverErr, "unsupported versions")
	if out.clientErr == nil {
		t.Fatal("a TLS 1.2 client was accepted")
	}
}

func TestServerRefusesWrongRoleNamingIt(t *testing.T) {
	files := devPKI(t, agent, ps1, mt1)
	out := exchange(t,
		mustServer(t, files[mt1], RoleProcessServer),
		mustClient(t, files[agent], "127.0.0.1", RoleMasterTarget))
	wantErrContains(t, "server", out.serverErr, "refusing TLS client agent/web01", "only process-server may connect")
	wantErrContains(t, "client", out.clientErr, "bad certificate")
}

func TestServerAllowsListedIdentityOnly(t *testing.T) {
	other := Identity{Role: RoleAgent, Name: "db01"}
	files := devPKI(t, agent, other, ps1)
	srv := mustServer(t, files[ps1], other)
	if out := exchange(t, srv, mustClient(t, files[other], "127.0.0.1", RoleProcessServer)); out.serverErr != nil || out.clientErr != nil {
		t.Fatalf("listed agent refused: server: %v; client: %v", out.serverErr, out.clientErr)
	}
	out := exchange(t, srv, mustClient(t, files[agent], "127.0.0.1", RoleProcessServer))
	wantErrContains(t, "server", out.serverErr, "agent/web01", "only agent/db01 may connect")
}

func TestClientRefusesServerWithWrongIdentity(t *testing.T) {
	files := devPKI(t, agent, ps1, mt1)
	t.Run("role", func(t *testing.T) {
		out := exchange(t,
			mustServer(t, files[mt1], RoleAgent),
			mustClient(t, files[agent], "127.0.0.1", RoleProcessServer))
		wantErrContains(t, "client", out.clientErr, "refusing TLS server master-target/mt1 at 127.0.0.1", "expected process-server")
		wantErrContains(t, "server", out.serverErr, "bad certificate")
	})
	t.Run("name", func(t *testing.T) {
		out := exchange(t,
			mustServer(t, files[ps1], RoleAgent),
			mustClient(t, files[agent], "127.0.0.1", Identity{Role: RoleProcessServer, Name: "ps2"}))
		wantErrContains(t, "client", out.clientErr, "process-server/ps1", "expected process-server/ps2")
	})
}

func TestUnknownCARefusedOnBothSides(t *testing.T) {
	ours := devPKI(t, agent, ps1)
	theirs := devPKI(t, agent, ps1)
	t.Run("client certificate from another CA", func(t *testing.T) {
		// The client trusts both CAs, so the handshake gets as far as the
		// server judging the client's certificate.
		bundle := filepath.Join(t.TempDir(), "both.crt")
		both := append(readFile(t, ours[ps1].CA), readFile(t, theirs[ps1].CA)...)
		if err := os.WriteFile(bundle, both, 0o600); err != nil {
			t.Fatal(err)
		}
		stranger := Files{CA: bundle, Cert: theirs[agent].Cert, Key: theirs[agent].Key}
		out := exchange(t,
			mustServer(t, ours[ps1], RoleAgent),
			mustClient(t, stranger, "127.0.0.1", RoleProcessServer))
		wantErrContains(t, "server", out.serverErr, "certificate signed by unknown authority")
		wantErrContains(t, "client", out.clientErr, "unknown certificate authority")
	})
	t.Run("server certificate from another CA", func(t *testing.T) {
		out := exchange(t,
			mustServer(t, theirs[ps1], RoleAgent),
			mustClient(t, ours[agent], "127.0.0.1", RoleProcessServer))
		wantErrContains(t, "client", out.clientErr, "certificate signed by unknown authority")
		// Go's client reports every verification failure as bad_certificate.
		wantErrContains(t, "server", out.serverErr, "bad certificate")
	})
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestExpiredCertificateRefused(t *testing.T) {
	dir := t.TempDir()
	files, err := DevPKI(dir, loopbackHosts, ps1)
	if err != nil {
		t.Fatal(err)
	}
	authority, err := loadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	// Issued within the CA's lifetime, expired an hour ago.
	certPEM, keyPEM, err := authority.issue(agent, loopbackHosts, authority.cert.NotBefore, time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	expiredDir := t.TempDir()
	certPath, keyPath, err := writeLeaf(expiredDir, agent, certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	expired := Files{CA: files[ps1].CA, Cert: certPath, Key: keyPath}

	out := exchange(t,
		mustServer(t, files[ps1], RoleAgent),
		mustClient(t, expired, "127.0.0.1", RoleProcessServer))
	wantErrContains(t, "server", out.serverErr, "certificate has expired")
	wantErrContains(t, "client", out.clientErr, "expired certificate")
}

func TestHostnameChecked(t *testing.T) {
	files := devPKI(t, agent, ps1)
	out := exchange(t,
		mustServer(t, files[ps1], RoleAgent),
		mustClient(t, files[agent], "10.200.0.9", RoleProcessServer))
	wantErrContains(t, "client", out.clientErr, "certificate is valid for 127.0.0.1", "not 10.200.0.9")
}

func TestCertificateWithoutIdentityRefused(t *testing.T) {
	dir := t.TempDir()
	files, err := DevPKI(dir, loopbackHosts, ps1)
	if err != nil {
		t.Fatal(err)
	}
	authority, err := loadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	// A certificate our CA signed, but not through Issue: no identity URI.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := randomSerial()
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "stray"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, authority.cert, &key.PublicKey, authority.key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := encodeKey(key)
	strayDir := t.TempDir()
	stray := Files{CA: files[ps1].CA, Cert: filepath.Join(strayDir, "stray.crt"), Key: filepath.Join(strayDir, "stray.key")}
	if err := os.WriteFile(stray.Cert, encodeCert(der), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stray.Key, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	// Our own configurations refuse to load it, so drive the handshake
	// with a bare client that only has the certificate.
	pair, err := tls.LoadX509KeyPair(stray.Cert, stray.Key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ClientConfig(stray, "127.0.0.1", RoleProcessServer); err == nil || !strings.Contains(err.Error(), "no standby identity") {
		t.Errorf("ClientConfig with an identity-less certificate: err = %v, want one saying it has no standby identity", err)
	}
	cli := mustClient(t, files[ps1], "127.0.0.1", RoleProcessServer)
	cli.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
	cli.VerifyConnection = nil
	out := exchange(t, mustServer(t, files[ps1], RoleAgent), cli)
	wantErrContains(t, "server", out.serverErr, "refusing TLS client (no identity)", "no standby identity")
}

func TestCredentialsCrossChecked(t *testing.T) {
	ours := devPKI(t, agent)
	theirs := devPKI(t, agent)
	mixed := Files{CA: theirs[agent].CA, Cert: ours[agent].Cert, Key: ours[agent].Key}
	if _, err := ServerConfig(mixed, RoleAgent); err == nil || !strings.Contains(err.Error(), "was not issued by any CA in") {
		t.Errorf("certificate with the wrong CA file: err = %v", err)
	}
	wrongKey := Files{CA: ours[agent].CA, Cert: ours[agent].Cert, Key: theirs[agent].Key}
	if _, err := ClientConfig(wrongKey, "x", RoleAgent); err == nil || !strings.Contains(err.Error(), "private key does not match") {
		t.Errorf("certificate with another's key: err = %v", err)
	}
	if _, err := ServerConfig(ours[agent]); err == nil {
		t.Error("ServerConfig with no allowed roles succeeded")
	}
	if _, err := ClientConfig(ours[agent], "", RoleAgent); err == nil {
		t.Error("ClientConfig with no server name succeeded")
	}
	if _, err := ClientConfig(ours[agent], "x"); err == nil {
		t.Error("ClientConfig with no expected identity succeeded")
	}
}

func TestNewCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if err := NewCA(dir, "site-a"); err != nil {
		t.Fatalf("NewCA: %v", err)
	}
	st, err := os.Stat(filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("ca.key mode %v, want 0600", st.Mode().Perm())
	}
	before, _ := os.ReadFile(filepath.Join(dir, "ca.key"))
	err = NewCA(dir, "site-a")
	if err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Errorf("second NewCA: err = %v, want a refusal to overwrite", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "ca.key"))
	if !bytes.Equal(before, after) {
		t.Error("second NewCA changed ca.key")
	}
	authority, err := loadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if pub, ok := authority.cert.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("CA key is %T, want ECDSA P-256", authority.cert.PublicKey)
	}
	if id, err := identityOf(authority.cert); err != nil || id != (Identity{Role: RoleCA, Name: "site-a"}) {
		t.Errorf("CA identity = %v, %v", id, err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(leftovers) != 0 {
		t.Errorf("temporary files left behind: %v", leftovers)
	}
}

func TestNewCAIsAtomicUnderRace(t *testing.T) {
	dir := t.TempDir()
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = NewCA(dir, "race")
		}()
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		if err == nil {
			won++
		}
	}
	if won != 1 {
		t.Errorf("%d concurrent NewCA calls succeeded, want exactly 1 (errors: %v)", won, errs)
	}
	if _, err := loadCA(dir); err != nil {
		t.Errorf("CA after the race: %v", err)
	}
}

func TestIssue(t *testing.T) {
	caDir, out := t.TempDir(), t.TempDir()
	if err := NewCA(caDir, "site-a"); err != nil {
		t.Fatal(err)
	}
	id := Identity{Role: RoleProcessServer, Name: "ps-1.example"}
	certPath, keyPath, err := Issue(caDir, out, id, []string{"10.200.0.2", "ps1.example", "::1"})
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	if want := filepath.Join(out, "process-server-ps-1.example.crt"); certPath != want {
		t.Errorf("cert path %s, want %s", certPath, want)
	}
	if st, err := os.Stat(keyPath); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key %s: %v, mode %v; want 0600", keyPath, err, st.Mode().Perm())
	}
	cert, err := readCert(certPath)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := identityOf(cert); err != nil || got != id {
		t.Errorf("identity %v, %v; want %v", got, err, id)
	}
	if cert.Subject.CommonName != id.Name {
		t.Errorf("CN %q, want %q", cert.Subject.CommonName, id.Name)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != "standby://process-server/ps-1.example" {
		t.Errorf("URI SANs %v", cert.URIs)
	}
	if len(cert.IPAddresses) != 2 || !cert.IPAddresses[0].Equal(net.ParseIP("10.200.0.2")) || len(cert.DNSNames) != 1 || cert.DNSNames[0] != "ps1.example" {
		t.Errorf("SANs: IPs %v DNS %v", cert.IPAddresses, cert.DNSNames)
	}

	for _, bad := range []Identity{
		{Role: "admin", Name: "x"},
		{Role: RoleAgent, Name: ""},
		{Role: RoleAgent, Name: "../etc/passwd"},
		{Role: RoleAgent, Name: "a/b"},
		{Role: RoleCA, Name: "second-ca"},
	} {
		if _, _, err := Issue(caDir, out, bad, nil); err == nil {
			t.Errorf("Issue(%q) succeeded", bad)
		}
	}
	if _, _, err := Issue(caDir, out, agent, []string{"http://x"}); err == nil {
		t.Error("Issue with a URL as host succeeded")
	}
	if _, _, err := Issue(t.TempDir(), out, agent, nil); err == nil || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Issue without a CA: err = %v", err)
	}
}

func TestDevPKIIsIdempotent(t *testing.T) {
	dir := t.TempDir()
	first, err := DevPKI(dir, loopbackHosts, agent, ps1)
	if err != nil {
		t.Fatal(err)
	}
	read := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	caBefore, agentBefore, psBefore := read(first[agent].CA), read(first[agent].Cert), read(first[ps1].Cert)

	second, err := DevPKI(dir, loopbackHosts, agent, ps1)
	if err != nil {
		t.Fatal(err)
	}
	if second[agent] != first[agent] || second[ps1] != first[ps1] {
		t.Errorf("second call returned other files: %v vs %v", second, first)
	}
	if !bytes.Equal(read(second[agent].CA), caBefore) || !bytes.Equal(read(second[agent].Cert), agentBefore) || !bytes.Equal(read(second[ps1].Cert), psBefore) {
		t.Error("second call rewrote the CA or a certificate")
	}

	// A new host makes the old certificate unfit: it is issued again, by
	// the same CA.
	third, err := DevPKI(dir, append([]string{"10.213.0.2"}, loopbackHosts...), agent)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(read(third[agent].Cert), agentBefore) {
		t.Error("certificate not reissued for a new host")
	}
	if !bytes.Equal(read(third[agent].CA), caBefore) {
		t.Error("CA replaced")
	}
	cert, _ := readCert(third[agent].Cert)
	if len(cert.IPAddresses) != 2 {
		t.Errorf("reissued certificate IPs %v", cert.IPAddresses)
	}
	out := exchange(t,
		mustServer(t, second[ps1], RoleAgent),
		mustClient(t, third[agent], "127.0.0.1", RoleProcessServer))
	if out.serverErr != nil || out.clientErr != nil {
		t.Fatalf("reissued certificate refused: server %v, client %v", out.serverErr, out.clientErr)
	}
}

func TestDevPKIConcurrentCallers(t *testing.T) {
	dir := t.TempDir()
	var wg sync.WaitGroup
	results := make([]map[Identity]Files, 6)
	errs := make([]error, len(results))
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = DevPKI(dir, loopbackHosts, agent, ps1, mt1)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("caller %d: %v", i, err)
		}
	}
	for _, id := range []Identity{agent, ps1, mt1} {
		if _, err := results[0][id].load(); err != nil {
			t.Errorf("%s after concurrent DevPKI: %v", id, err)
		}
	}
}

func TestPeerIdentityNeedsVerifiedChain(t *testing.T) {
	if _, err := PeerIdentity(tls.ConnectionState{}); err == nil || !strings.Contains(err.Error(), "not verified") {
		t.Errorf("PeerIdentity of an unverified connection: err = %v", err)
	}
}

func TestIdentityURI(t *testing.T) {
	u := ps1.URI()
	if u.String() != "standby://process-server/ps1" {
		t.Errorf("URI = %s", u)
	}
	got, err := parseIdentityURI(u)
	if err != nil || got != ps1 {
		t.Errorf("round trip: %v, %v", got, err)
	}
	for _, s := range []string{"standby://agent/", "standby://agent/a/b", "standby://nobody/x", "standby://agent:1/x", "standby://agent/x?y"} {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		if id, err := parseIdentityURI(u); err == nil {
			t.Errorf("parseIdentityURI(%s) = %v, want an error", s, id)
		}
	}
}
