// Package netsim builds sites out of Linux network namespaces for tests:
// each site is a namespace, and a link between two sites is a pair of veth
// interfaces joined by an emulated WAN with latency, bandwidth, loss and
// cuts.
//
// Addresses are private (10.213.<link>.1 and .2) and exist only inside the
// sites' namespaces, so nothing a test sends can leave the machine. A
// site reaches only the sites it is linked to: there is no routing through
// a third site and no default route.
//
// It needs root and iproute2's ip; Available says whether they are there.
package netsim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// nsDir is where `ip netns` keeps its namespace handles.
const nsDir = "/run/netns"

// closeTimeout bounds the clean-up in Close, which runs when a test's own
// context is already cancelled.
const closeTimeout = 30 * time.Second

var (
	prefixPattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_-]{0,39}$`)
	// Site names leave out '.', so no site can be called like the wire
	// namespace (<prefix>.wire).
	sitePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)
)

// Net is a set of sites and links. Close removes all of it.
type Net struct {
	prefix string
	wireNS string
	log    *slog.Logger

	mu     sync.Mutex
	sites  []*Site
	links  []*Link
	closed bool
}

// New creates an empty Net. prefix starts the name of every namespace it
// creates, so that tests running side by side, and whatever a crashed run
// left behind, can be told apart; use one per test.
func New(ctx context.Context, prefix string) (*Net, error) {
	if !prefixPattern.MatchString(prefix) {
		return nil, fmt.Errorf("netsim: prefix %q must be 1-40 letters, digits, '_' or '-'", prefix)
	}
	n := &Net{
		prefix: prefix,
		wireNS: prefix + ".wire",
		log:    slog.Default().With(slog.String("netsim", prefix)),
	}
	if err := addNamespace(ctx, n.wireNS); err != nil {
		return nil, fmt.Errorf("netsim: create wire namespace: %w", err)
	}
	// The wire's own interfaces need no addresses; without IPv6 they stay
	// silent instead of sending router solicitations into the sites.
	if err := run(ctx, "ip", "netns", "exec", n.wireNS, "sh", "-c",
		"echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6"); err != nil {
		n.log.LogAttrs(ctx, slog.LevelDebug, "netsim: could not disable IPv6 in the wire namespace", slog.Any("err", err))
	}
	return n, nil
}

// Site is one network namespace.
type Site struct {
	net  *Net
	name string
	ns   string
}

// AddSite creates a site: a namespace with only its loopback interface up.
func (n *Net) AddSite(ctx context.Context, name string) (*Site, error) {
	if !sitePattern.MatchString(name) {
		return nil, fmt.Errorf("netsim: site name %q must be 1-32 lower-case letters, digits or '-'", name)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, fmt.Errorf("netsim: add site %s: net is closed", name)
	}
	for _, s := range n.sites {
		if s.name == name {
			return nil, fmt.Errorf("netsim: site %s already exists", name)
		}
	}
	s := &Site{net: n, name: name, ns: n.prefix + "-" + name}
	if err := addNamespace(ctx, s.ns); err != nil {
		return nil, fmt.Errorf("netsim: add site %s: %w", name, err)
	}
	if err := run(ctx, "ip", "-n", s.ns, "link", "set", "lo", "up"); err != nil {
		_ = deleteNamespace(ctx, s.ns)
		return nil, fmt.Errorf("netsim: add site %s: bring up loopback: %w", name, err)
	}
	n.sites = append(n.sites, s)
	return s, nil
}

// Name is the name the site was added with.
func (s *Site) Name() string { return s.name }

// Namespace is the site's network namespace, as `ip netns` lists it: handy
// for looking at a failing test by hand (ip netns exec NAME ss -tn).
func (s *Site) Namespace() string { return s.ns }

// Addr is the site's address on its link toward other, or "" when the two
// are not linked.
func (s *Site) Addr(toward *Site) string {
	s.net.mu.Lock()
	defer s.net.mu.Unlock()
	for _, l := range s.net.links {
		switch {
		case l.a == s && l.b == toward:
			return l.addrA
		case l.b == s && l.a == toward:
			return l.addrB
		}
	}
	return ""
}

// Command prepares name to run inside the site's namespace. The process is
// killed if the test process dies (it would otherwise outlive the
// namespace's name, unreachable); set cmd.SysProcAttr to change that.
func (s *Site) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", s.ns, name}, args...)...)
	// Pdeathsig fires when the thread that started the child ends; Go ends
	// threads only for goroutines that exit while locked to one, which
	// nothing starting commands does.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

func (s *Site) nsPath() string { return nsDir + "/" + s.ns }

// Close removes every site and link: it stops the wire, kills processes
// still running inside the sites and deletes the namespaces. It can be
// called more than once; later calls do nothing.
func (n *Net) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	sites, links := n.sites, n.links
	n.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	for _, l := range links {
		l.stop()
	}
	var errs []error
	for _, ns := range append(namespaces(sites), n.wireNS) {
		if err := deleteNamespace(ctx, ns); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("netsim: close %s: %w", n.prefix, err)
	}
	return nil
}

func namespaces(sites []*Site) []string {
	out := make([]string, len(sites))
	for i, s := range sites {
		out[i] = s.ns
	}
	return out
}

func addNamespace(ctx context.Context, ns string) error {
	if err := run(ctx, "ip", "netns", "add", ns); err != nil {
		return err
	}
	return nil
}

// deleteNamespace kills what still runs in ns and removes it. A process
// left inside would keep the namespace, and its interfaces, alive after
// its name is gone, where nobody can reach or find it.
func deleteNamespace(ctx context.Context, ns string) error {
	if _, err := os.Stat(nsDir + "/" + ns); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	out, err := exec.CommandContext(ctx, "ip", "netns", "pids", ns).Output()
	if err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if err := run(ctx, "ip", "netns", "delete", ns); err != nil {
		return fmt.Errorf("delete namespace %s: %w", ns, err)
	}
	return nil
}

// run runs a command and folds its output into the error: ip's messages
// ("RTNETLINK answers: File exists") are the useful part.
func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
