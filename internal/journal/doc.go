// Package journal is the master target's undo journal: before the apply
// loop overwrites a range of a replica disk with record seq, the old content
// of the range (its before-image) is appended here tagged with seq. The
// replica stays at the newest point, so failing over to "latest" needs no
// rebuilding, and any older point P is a View: for each block, the earliest
// before-image with seq > P if there is one, else the replica.
//
// # Write-ahead rule
//
// A replica range may be overwritten only after the before-image that
// protects it is durable:
//
//	Lock(range) → Preserve(seq, range) → Sync() → write replica → unlock
//
// with any number of non-overlapping records sharing one Sync (Applier does
// the bookkeeping). After a crash, LastSeq tells the apply loop which
// records were already preserved: those must be applied again without
// preserving, since their replica range may already hold the new data.
//
// # Files
//
// A journal is a directory of segment files named after the seq of their
// first record (%020d.ujl) plus a LOCK file. A segment is a 32-byte header
// (block size, base seq, the previous segment's base) followed by records;
// each record is a run of up to 256 contiguous blocks of one disk for one
// seq, with a zero bitmap (all-zero blocks are not stored) and a CRC-32C
// per stored block. docs/formats.md ("Undo journal") has the byte layout.
//
// # Recovery
//
// A segment is fdatasynced before the next is created, and a new segment's
// header is durable before any record goes in, so only the newest segment
// can end in a torn record; Open cuts such a tail with a warning and fails
// with ErrCorrupt for damage anywhere else. Sealed segments are scanned by
// their headers only; their blocks are verified when a view reads them.
//
// # Space
//
// Prune(keepFrom) drops whole oldest segments older than keepFrom except
// those an open view needs. MaxBytes is enforced by Preserve, which drops
// the oldest segments whatever views need (apply never waits for space):
// views that needed them fail every read from then on with
// ErrViewInvalidated, and Pruned reports the drop.
package journal
