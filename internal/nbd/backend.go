package nbd

import (
	"context"
	"errors"
	"io"
	"syscall"

	"standby/internal/blockdev"
)

// Backend is the storage behind an export. The server has already checked
// that every range lies within [0, Size()) and that writes are not sent to
// read-only exports, so implementations need not repeat those checks.
//
// Errors wrapping a syscall.Errno are mapped to the matching NBD error
// (ENOSPC, EPERM, EINVAL, ...); anything else becomes EIO.
type Backend interface {
	Size() int64
	ReadAt(ctx context.Context, p []byte, off int64) error
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	Flush(ctx context.Context) error
	Trim(ctx context.Context, off, length int64, fua bool) error
	WriteZeroes(ctx context.Context, off, length int64, fua, noHole bool) error
}

// BufferKeeper is optionally implemented by a Backend that keeps a write's
// payload rather than copying it (the agent queues it for replication).
// The server then calls WriteAtKeep instead of WriteAt: the payload is
// (*buf)[:n], in a buffer from the Server's Buffers pool, and the backend
// owns the buffer from the call on, error or not, and gives it back to
// that pool when it is done with it.
type BufferKeeper interface {
	WriteAtKeep(ctx context.Context, buf *[]byte, n int, off int64, fua bool) error
}

// Extenter is optionally implemented by a Backend that knows which ranges
// are holes. It backs NBD_CMD_BLOCK_STATUS for the "base:allocation" meta
// context, which lets clients such as nbdcopy skip unallocated ranges.
// Backends without it report everything as allocated data, which is always
// correct, only slower for the client.
type Extenter interface {
	// Extents calls fn for consecutive runs covering [off, off+length);
	// hole runs must read as zeros. When fn returns an error, Extents
	// must stop and return it (the server stops early that way).
	Extents(ctx context.Context, off, length int64, fn func(off, length int64, hole bool) error) error
}

// Export is one named disk offered by a Server.
type Export struct {
	Name, Description string
	Backend           Backend
	ReadOnly          bool
}

// DiskBackend serves an export straight from a blockdev.Disk, with no
// replication in between: the shape of a plain unprotected export, and the
// base the agent wraps its capturing backend around.
type DiskBackend struct {
	Disk *blockdev.Disk
}

var (
	_ Backend  = DiskBackend{}
	_ Extenter = DiskBackend{}
)

func (b DiskBackend) Size() int64 { return b.Disk.Size() }

func (b DiskBackend) ReadAt(_ context.Context, p []byte, off int64) error {
	_, err := b.Disk.ReadAt(p, off)
	return err
}

func (b DiskBackend) WriteAt(_ context.Context, p []byte, off int64, fua bool) error {
	if _, err := b.Disk.WriteAt(p, off); err != nil {
		return err
	}
	if fua {
		return b.Disk.Sync()
	}
	return nil
}

func (b DiskBackend) Flush(context.Context) error { return b.Disk.Sync() }

func (b DiskBackend) Trim(_ context.Context, off, length int64, fua bool) error {
	if err := b.Disk.PunchHole(off, length); err != nil {
		return err
	}
	if fua {
		return b.Disk.Sync()
	}
	return nil
}

func (b DiskBackend) WriteZeroes(_ context.Context, off, length int64, fua, noHole bool) error {
	if err := b.Disk.ZeroRange(off, length, !noHole); err != nil {
		return err
	}
	if fua {
		return b.Disk.Sync()
	}
	return nil
}

func (b DiskBackend) Extents(_ context.Context, off, length int64, fn func(off, length int64, hole bool) error) error {
	return b.Disk.Extents(off, length, func(o, n int64, data bool) error { return fn(o, n, !data) })
}

// errnoFor maps a backend error to the closest error value the protocol
// allows on the wire.
func errnoFor(err error) uint32 {
	var errno syscall.Errno
	switch {
	case err == nil:
		return 0
	case errors.Is(err, blockdev.ErrOutOfRange):
		return errnoInval
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errnoIO
	case errors.As(err, &errno):
	default:
		return errnoIO
	}
	switch errno {
	case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
		return errnoNoSpc
	case syscall.EPERM, syscall.EACCES, syscall.EROFS:
		return errnoPerm
	case syscall.EINVAL:
		return errnoInval
	case syscall.EOVERFLOW:
		return errnoOverflow
	case syscall.ENOTSUP:
		return errnoNotSup
	case syscall.ESHUTDOWN:
		return errnoShutdown
	case syscall.ENOMEM:
		// The spec asks servers to avoid ENOMEM; a client would treat it
		// as retryable, which a failed backend allocation is not.
		return errnoIO
	default:
		return errnoIO
	}
}
