package imagefmt

import (
	"fmt"
	"strings"
)

// Format is an image file format that Write can produce.
type Format string

// The formats Write can produce.
const (
	FormatRaw   Format = "raw"   // a plain disk image; zero blocks are holes
	FormatQcow2 Format = "qcow2" // qcow2 version 3, no backing file
	FormatVMDK  Format = "vmdk"  // VMDK monolithicFlat: descriptor + flat extent
)

// Formats lists the supported formats, for help texts and validation.
func Formats() []Format { return []Format{FormatRaw, FormatQcow2, FormatVMDK} }

// ParseFormat turns an operator's spelling ("QCOW2", " raw ") into a Format.
func ParseFormat(s string) (Format, error) {
	f := Format(strings.ToLower(strings.TrimSpace(s)))
	switch f {
	case FormatRaw, FormatQcow2, FormatVMDK:
		return f, nil
	}
	return "", fmt.Errorf("imagefmt: unknown image format %q (want raw, qcow2 or vmdk)", s)
}

// String returns the format's name.
func (f Format) String() string { return string(f) }
