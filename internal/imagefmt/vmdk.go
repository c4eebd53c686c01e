package imagefmt

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
)

// VMDK adapter types a monolithicFlat descriptor may name.
const (
	VMDKAdapterIDE      = "ide"
	VMDKAdapterBusLogic = "buslogic"
	VMDKAdapterLSILogic = "lsilogic"
	VMDKAdapterLegacy   = "legacyESX"
)

// vmdkFlatPath is the extent file beside descriptor path: "disk.vmdk" →
// "disk-flat.vmdk", as VMware names it.
func vmdkFlatPath(path string) string {
	dir, base := filepath.Split(path)
	return filepath.Join(dir, strings.TrimSuffix(base, ".vmdk")+"-flat.vmdk")
}

func vmdkCheckAdapter(a string) error {
	switch a {
	case VMDKAdapterIDE, VMDKAdapterBusLogic, VMDKAdapterLSILogic, VMDKAdapterLegacy:
		return nil
	}
	return fmt.Errorf("imagefmt: unknown VMDK adapter type %q (want ide, buslogic, lsilogic or legacyESX)", a)
}

// vmdkDescriptor is the text descriptor of a monolithicFlat disk whose one
// extent, flatName (relative to the descriptor), holds sectors 512-byte
// sectors.
func vmdkDescriptor(flatName string, sectors int64, adapter string) (string, error) {
	if strings.ContainsAny(flatName, "\"\n\r/\\") {
		return "", fmt.Errorf("imagefmt: VMDK extent name %q cannot be written in a descriptor", flatName)
	}
	// The geometry only matters to BIOSes and old guests; these are the
	// values VMware itself writes: IDE caps cylinders at 16383, SCSI
	// adapters translate with 255 heads.
	heads := int64(255)
	if adapter == VMDKAdapterIDE {
		heads = 16
	}
	cyl := sectors / (heads * 63)
	if adapter == VMDKAdapterIDE {
		cyl = min(cyl, 16383)
	}
	cyl = max(cyl, 1)
	var b strings.Builder
	fmt.Fprintf(&b, "# Disk DescriptorFile\n")
	fmt.Fprintf(&b, "version=1\n")
	fmt.Fprintf(&b, "encoding=\"UTF-8\"\n")
	// CID changes whenever the content changes; a fresh random one says
	// "a new disk" to anything that caches by it.
	fmt.Fprintf(&b, "CID=%08x\n", rand.Uint32())
	fmt.Fprintf(&b, "parentCID=ffffffff\n")
	fmt.Fprintf(&b, "createType=\"monolithicFlat\"\n\n")
	fmt.Fprintf(&b, "# Extent description\n")
	fmt.Fprintf(&b, "RW %d FLAT \"%s\" 0\n\n", sectors, flatName)
	fmt.Fprintf(&b, "# The Disk Data Base\n#DDB\n\n")
	fmt.Fprintf(&b, "ddb.virtualHWVersion = \"4\"\n")
	fmt.Fprintf(&b, "ddb.geometry.cylinders = \"%d\"\n", cyl)
	fmt.Fprintf(&b, "ddb.geometry.heads = \"%d\"\n", heads)
	fmt.Fprintf(&b, "ddb.geometry.sectors = \"63\"\n")
	fmt.Fprintf(&b, "ddb.adapterType = \"%s\"\n", adapter)
	return b.String(), nil
}
