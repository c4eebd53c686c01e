// Package seglog is a segmented, checksummed, append-only log on disk. It is
// the process server's durable cache (one log per protected machine) and the
// master target's intake log: an entry is a batch tagged with the range of
// sequence numbers it covers, appended (and fsynced) before the sender is
// acknowledged, read in order by a forwarder or apply loop, and trimmed once
// the next hop has it.
//
// # Files
//
// A log is a directory of segment files named after the First sequence
// number of their first entry (%020d.seg), plus a LOCK file that keeps a
// second process out. Each segment is a run of records, a 32-byte header
// followed by the payload, checksummed with CRC-32C; docs/formats.md has the
// byte layout.
//
// # Durability rules
//
//   - Append with sync=true returns after fdatasync of the segment (and, for
//     a new segment, fsync of the directory). Appends waiting for a sync
//     that is already running share the next one (group commit).
//   - A segment is made durable before the next one is created, even when
//     nothing asked for a sync. So after any crash only the last segment
//     can end in a torn record, and Open can tell a torn tail (truncated,
//     with a warning) from damage to data that was acknowledged (an error
//     wrapping ErrCorrupt, never repaired silently). A damaged record
//     counts as the tail only if no valid record follows it.
//   - A failed fdatasync makes the log refuse further writes: the kernel may
//     have dropped the pages it could not write, so a later sync that
//     succeeds would prove nothing. Reopen to find out what is on disk.
//
// # Space
//
// MaxBytes bounds the bytes in segment files. Trimming drops whole segments,
// never the active one, since dropping it on every trim would create a file
// and fsync the directory per batch whenever the consumer keeps up; a fully
// trimmed active segment is dropped only when an append needs its space.
// Trimming is not recorded on disk: after a reopen, the entries of segments
// that were kept are readable again, which replays are expected to tolerate
// (sequence numbers make them idempotent).
//
// Trimmed segment files are kept as spares (at most maxSpares) and reused
// for new segments, because overwriting cached, allocated blocks is much
// cheaper than filling a new file. A reused file may hold an older
// segment's records past the new ones until it is sealed or the log is
// closed; Open tells them apart by sequence number (docs/formats.md).
package seglog
