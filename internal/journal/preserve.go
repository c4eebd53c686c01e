package journal

import (
	"errors"
	"fmt"
	"io"

	"standby/internal/blockdev"
)

// Preserve appends the current replica content of the block-aligned range
// around [off, off+n) of disk, tagged with seq, and indexes it. Call it with
// the range locked (Lock), before the replica write of record seq, and Sync
// before that write happens (write-ahead). Calls must come in seq order,
// one call per record; all-zero blocks are stored as a flag.
//
// Preserve reads the replica, so an earlier record touching the same blocks
// must already be written there: records batched under one Sync must not
// overlap at block granularity (Applier takes care of it).
//
// Appends are buffered; they reach the file when the buffer fills, at Sync,
// or when a segment is sealed. Past MaxBytes the oldest segments are
// dropped on the spot.
func (j *Journal) Preserve(seq uint64, disk int, off, n int64) error {
	return j.preserve(seq, disk, off, n, false)
}

// PreserveZero is Preserve for a record that zeroes the range (TRIM, write
// zeroes, a zero copy): blocks that are already all zero are not preserved,
// since zeroing them changes nothing. A TRIM of a mostly empty disk then
// costs reads, not journal space.
func (j *Journal) PreserveZero(seq uint64, disk int, off, n int64) error {
	return j.preserve(seq, disk, off, n, true)
}

func (j *Journal) preserve(seq uint64, disk int, off, n int64, skipZero bool) error {
	j.wmu.Lock()
	defer j.wmu.Unlock()
	j.mu.Lock()
	err := j.usableLocked()
	lastAny, lastFinal, haveAny := j.lastAny, j.lastFinal, j.haveAny
	j.mu.Unlock()
	if err != nil {
		return fmt.Errorf("journal: preserving seq %d: %w", seq, err)
	}
	if disk < 0 || disk >= len(j.disks) {
		return fmt.Errorf("journal: preserving seq %d: disk %d of %d", seq, disk, len(j.disks))
	}
	size := j.disks[disk].Size
	if off < 0 || n < 0 || off > size || n > size-off {
		return fmt.Errorf("journal: preserving seq %d: range %d+%d outside disk %d of %d bytes", seq, off, n, disk, size)
	}
	if n > MaxPreserve {
		return fmt.Errorf("journal: preserving seq %d: range of %d bytes above the %d-byte limit of one call", seq, n, MaxPreserve)
	}
	if haveAny && (seq < lastAny || (seq == lastAny && lastFinal)) {
		return fmt.Errorf("journal: preserving seq %d after seq %d: %w", seq, lastAny, ErrOrder)
	}
	if n == 0 {
		return nil
	}
	b0, b1 := j.blockRange(off, n)
	// A segment is rolled only between calls: one call's records stay in
	// one segment, so a dropped segment never takes part of a seq with it.
	// Segments overshoot SegmentSize by at most one call. The roll waits
	// for the call's first record: a PreserveZero may store nothing, and a
	// segment's base must be the seq of its first record.
	bound := (b1-b0)*(j.bs+blockCRCSize) + (b1-b0+maxRunBlocks-1)/maxRunBlocks*int64(headLen(maxRunBlocks))
	bs := int(j.bs)
	var pending struct {
		have  bool
		first int64
		zero  []bool
		data  []byte
	}
	emitted := false
	emit := func(final bool) error {
		// A call retried after a crash interrupted it (same seq as the
		// active segment's last record) stays in that segment too.
		if !emitted && j.active != nil && j.active.records == 0 && j.active.hdr.base != seq {
			if err := j.rebaseEmpty(seq); err != nil {
				return err
			}
		}
		if !emitted && (j.active == nil || (j.active.records > 0 && j.active.last != seq && j.active.size+bound > j.segSize)) {
			if err := j.roll(seq); err != nil {
				return err
			}
		}
		j.rec = appendRecord(j.rec[:0], seq, uint16(disk), uint64(pending.first), final, pending.zero, pending.data, bs)
		pending.have = false
		emitted = true
		return j.appendRecord(j.rec)
	}
	for b := b0; b < b1; b += maxRunBlocks {
		cnt := min(b1-b, maxRunBlocks)
		buf := j.readBuf(int(cnt) * bs)
		if err := j.readReplica(disk, buf, b); err != nil {
			return fmt.Errorf("journal: preserving seq %d: %w", seq, err)
		}
		zero := j.zeros[:0]
		for i := range int(cnt) {
			zero = append(zero, blockdev.IsZero(buf[i*bs:(i+1)*bs]))
		}
		j.zeros = zero
		if !skipZero {
			pending.have, pending.first, pending.zero, pending.data = true, b, zero, buf
			if err := emit(b+cnt == b1); err != nil {
				return err
			}
			continue
		}
		// Only runs of non-zero blocks are kept. Each run is encoded when
		// the next is found, so the last one can carry the final flag.
		for i := 0; i < int(cnt); {
			if zero[i] {
				i++
				continue
			}
			k := i
			for k < int(cnt) && !zero[k] {
				k++
			}
			if pending.have {
				if err := emit(false); err != nil {
					return err
				}
			}
			// The run is copied out: buf is reused by the next piece.
			pending.have, pending.first = true, b+int64(i)
			pending.zero = append(pending.zero[:0], zero[i:k]...)
			pending.data = append(pending.data[:0], buf[i*bs:k*bs]...)
			i = k
		}
	}
	switch {
	case pending.have:
		err = emit(true)
	case skipZero && emitted:
		// The call ended in zero blocks after records were written: close it
		// with a record for its last block, which is zero (an exact, if
		// unneeded, before-image).
		pending.have, pending.first = true, b1-1
		pending.zero = append(pending.zero[:0], true)
		pending.data = pending.data[:0]
		err = emit(true)
	}
	if err == nil && j.max > 0 && emitted {
		j.dropForSpace()
	}
	return err
}

func (j *Journal) readBuf(n int) []byte {
	if cap(j.rbuf) < n {
		j.rbuf = make([]byte, n)
	}
	return j.rbuf[:n]
}

// readReplica fills buf with whole blocks from block b of disk's replica;
// bytes past the end of the disk read as zero.
func (j *Journal) readReplica(disk int, buf []byte, b int64) error {
	d := j.disks[disk]
	off := b << j.shift
	n := min(int64(len(buf)), d.Size-off)
	if n < 0 {
		n = 0
	}
	if n > 0 {
		got, err := d.Replica.ReadAt(buf[:n], off)
		if got < int(n) || (err != nil && !errors.Is(err, io.EOF)) {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("reading %d bytes at %d of replica disk %d: %w", n, off, disk, err)
		}
	}
	clear(buf[n:])
	return nil
}

// Sync makes every appended before-image durable (fdatasync). The apply
// loop calls it before writing the replica ranges those images protect;
// one Sync serves any number of Preserve calls.
func (j *Journal) Sync() error {
	j.wmu.Lock()
	defer j.wmu.Unlock()
	j.mu.Lock()
	err := j.usableLocked()
	j.mu.Unlock()
	if err != nil {
		return fmt.Errorf("journal: sync: %w", err)
	}
	return j.syncLocked()
}

// syncLocked is Sync with wmu held.
func (j *Journal) syncLocked() error {
	if j.active == nil || !j.unsynced {
		return nil
	}
	if err := j.flush(); err != nil {
		return err
	}
	if err := fdatasync(j.active.f); err != nil {
		return j.fail(fmt.Errorf("journal: syncing segment %s: %w", j.active.path, err))
	}
	j.unsynced = false
	j.mu.Lock()
	j.synced = j.lastDone
	j.mu.Unlock()
	return nil
}
