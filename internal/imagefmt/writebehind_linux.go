package imagefmt

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// writeBehindWindow is how much written data is handed to the disk at a
// time; about two windows are dirty in the page cache at once.
const writeBehindWindow = 32 << 20

// writeBehind starts the disk writing an image while it is still being
// produced, rather than leaving gigabytes dirty in the page cache for one
// long fsync at the end: the disk works during the whole export, the final
// fsync is short, and an export does not make the kernel throttle every
// other writer on the machine (the master target applying replication
// above all). Writes must move forward through the file.
type writeBehind struct {
	f       *os.File
	started int64 // writeback was started for [0, started)
	waited  int64 // and has finished for [0, waited)
	off     bool  // the file system does not support sync_file_range
}

func newWriteBehind(f *os.File) *writeBehind { return &writeBehind{f: f} }

// advance says the file is written up to end.
func (w *writeBehind) advance(end int64) error {
	upto := alignDown(end, writeBehindWindow)
	if w.off || upto <= w.started {
		return nil
	}
	// One call for everything since the last one, however large: a sparse
	// disk may jump terabytes between two writes.
	fd := int(w.f.Fd())
	err := unix.SyncFileRange(fd, w.started, upto-w.started, unix.SYNC_FILE_RANGE_WRITE)
	if err == nil && w.started > w.waited {
		// Wait for what was started last time: this is what bounds the
		// dirty data, and by now it is mostly on disk anyway.
		err = unix.SyncFileRange(fd, w.waited, w.started-w.waited,
			unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER)
	}
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.ESPIPE) {
		w.off = true // only an optimisation: fsync still makes the image durable
		return nil
	}
	if err != nil {
		return fmt.Errorf("imagefmt: write back %s: %w", w.f.Name(), err)
	}
	w.waited, w.started = w.started, upto
	return nil
}
