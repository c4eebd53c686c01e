package pki

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// pending is a file written to a temporary name in its final directory,
// so that publishing it is a single rename or link and readers never see
// half a key.
type pending struct {
	tmp, final string
}

// stage writes data to a temporary file next to final and syncs it.
func stage(final string, data []byte, perm fs.FileMode) (pending, error) {
	f, err := os.CreateTemp(filepath.Dir(final), "."+filepath.Base(final)+".tmp-*")
	if err != nil {
		return pending{}, fmt.Errorf("create temporary file for %s: %w", final, err)
	}
	p := pending{tmp: f.Name(), final: final}
	err = func() error {
		if err := f.Chmod(perm); err != nil {
			return err
		}
		if _, err := f.Write(data); err != nil {
			return err
		}
		return f.Sync()
	}()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		p.discard()
		return pending{}, fmt.Errorf("write %s: %w", final, err)
	}
	return p, nil
}

func (p pending) discard() { _ = os.Remove(p.tmp) }

// replace publishes p over whatever is at its final name.
func (p pending) replace() error {
	if err := os.Rename(p.tmp, p.final); err != nil {
		p.discard()
		return fmt.Errorf("publish %s: %w", p.final, err)
	}
	return nil
}

// create publishes p only if nothing is at its final name: link(2) fails on
// an existing target, which makes "refuse to overwrite" atomic even when two
// processes race to create the same file.
func (p pending) create() error {
	defer p.discard()
	if err := os.Link(p.tmp, p.final); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("refusing to overwrite %s: %w", p.final, fs.ErrExist)
		}
		return fmt.Errorf("publish %s: %w", p.final, err)
	}
	return nil
}

// syncDir makes the renames in dir durable; a CA key that vanishes after a
// power cut would orphan every certificate issued from it.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open %s to sync it: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
