// Package capture tracks which regions of a protected disk the replica may
// be missing, and finds changed blocks of disks the agent cannot sit in
// front of.
//
// Tracker is the intercept-mode change tracker: a DRBD-style activity log
// of coarse extents (persisted before a write may touch the disk, so a
// crash of the agent cannot hide a write) plus a fine-grained dirty bitmap
// for gaps and resync. Scanner is the scan-mode change source: per-block
// SHA-256 fingerprints compared against the last pass the far end
// confirmed. Fingerprints and Compare serve verification.
//
// The on-disk formats and the reasoning for why they are crash-safe are in
// docs/capture.md.
package capture
