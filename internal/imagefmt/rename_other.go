//go:build !linux

package imagefmt

import "os"

// renameNoReplace gives old the name new unless new exists (then the error
// matches fs.ErrExist); a hard link is exclusive where a rename is not.
func renameNoReplace(old, new string) error {
	if err := os.Link(old, new); err != nil {
		return err
	}
	return os.Remove(old)
}
