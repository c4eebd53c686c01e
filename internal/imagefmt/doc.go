// Package imagefmt materialises a disk — a recovery point's view, or any
// Source — into a standalone image file: raw (sparse), qcow2 (version 3) or
// VMDK monolithicFlat.
//
// The encoders are written here rather than shelling out to qemu-img because
// the master target must be able to export on machines that have no QEMU,
// and because only the caller knows cheaply which ranges of a view hold data:
// a generic converter would have to read the whole disk to find out.
//
// Writing is one streaming pass: a reader goroutine walks the source's
// extents in large sequential reads and marks all-zero blocks, a writer
// appends the data that is not zero. Nothing is ever read twice and no image
// metadata has to be rewritten in place, so the speed is the speed of the
// disks. The on-disk layouts are documented in docs/formats.md ("Exported
// images").
package imagefmt
