package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSystemdUnits checks the service units in deploy/systemd: systemd
// accepts them without a warning, and the binary accepts the command line
// each one runs. (This machine has no running systemd, so they are not
// started here.)
func TestSystemdUnits(t *testing.T) {
	requireTools(t, "systemd-analyze")
	units, err := filepath.Glob(filepath.Join("..", "..", "deploy", "systemd", "*.service"))
	if err != nil || len(units) != 3 {
		t.Fatalf("want the three units of deploy/systemd, found %v (%v)", units, err)
	}
	dir := t.TempDir()
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Base(u)
		role := strings.TrimSuffix(strings.TrimPrefix(name, "standby-"), ".service")
		var exec0 string
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "ExecStart="); ok {
				exec0 = v
			}
		}
		args := strings.Fields(exec0)
		if len(args) < 2 || args[0] != "/usr/local/bin/standby" || args[1] != role {
			t.Fatalf("%s: ExecStart=%q: want /usr/local/bin/standby %s ...", name, exec0, role)
		}
		// The binary under test stands in for the installed one:
		// verify checks that the command exists and is executable.
		unit := strings.ReplaceAll(string(b), "/usr/local/bin/standby", standbyBin)
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(unit), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := runCmd("systemd-analyze", "verify", "--man=no", p)
		if err != nil || strings.Contains(out, name) {
			t.Errorf("systemd-analyze verify %s: %v\n%s", name, err, out)
		}
		// Every flag of the command line exists (cobra refuses unknown
		// ones before it looks at --help).
		if out, err := runCmd(standbyBin, append(args[1:], "--help")...); err != nil {
			t.Errorf("%s: standby %s: %v\n%s", name, strings.Join(args[1:], " "), err, out)
		}
	}
}

func runCmd(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}
