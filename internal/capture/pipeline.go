package capture

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
)

// pieceSize is the unit of disk reads: large enough that per-read overhead
// vanishes, small enough that a few buffers in flight cost little memory.
const pieceSize = 4 << 20

// piece is one large sequential read, possibly with per-block hashes.
type piece struct {
	off  int64
	buf  []byte
	sums [][32]byte // per block, when hashing
	zero []bool     // per block, when hashing
	err  error
	done chan struct{} // closed when buf is read and hashed (or err set)
}

// pipeline reads [0, size) of r in order, one goroutine reading ahead and,
// if hashing, several hashing whole pieces in parallel; pieces come out of
// next() in disk order. Close must be called; it waits for the goroutines,
// so r is no longer touched when it returns.
type pipeline struct {
	out    chan *piece
	free   chan []byte
	cancel context.CancelFunc
	wg     sync.WaitGroup
	bufLen int64
}

func piecesFor(blockSize int64) int64 {
	return max(blockSize, pieceSize/blockSize*blockSize)
}

func newPipeline(ctx context.Context, r io.ReaderAt, size, blockSize int64, hash bool) *pipeline {
	ctx, cancel := context.WithCancel(ctx)
	workers := 0
	if hash {
		workers = max(1, runtime.GOMAXPROCS(0))
	}
	nbuf := workers + 2
	p := &pipeline{
		// Capacities hold every buffer, so sends never block: only taking
		// a free buffer does, and that watches ctx.
		out:    make(chan *piece, nbuf),
		free:   make(chan []byte, nbuf),
		cancel: cancel,
		bufLen: piecesFor(blockSize),
	}
	for range nbuf {
		p.free <- make([]byte, p.bufLen)
	}
	work := make(chan *piece, nbuf)
	var zeroBlock []byte
	var zero [32]byte
	if hash {
		zeroBlock = make([]byte, blockSize)
		zero = zeroSum(blockSize)
	}
	for range workers {
		p.wg.Go(func() {
			for pc := range work {
				hashPiece(pc, blockSize, zeroBlock, zero)
				close(pc.done)
			}
		})
	}
	p.wg.Go(func() {
		defer close(p.out)
		defer close(work)
		for off := int64(0); off < size; off += p.bufLen {
			var buf []byte
			select {
			case buf = <-p.free:
			case <-ctx.Done():
				return
			}
			n := min(p.bufLen, size-off)
			pc := &piece{off: off, buf: buf[:n], done: make(chan struct{})}
			if _, err := readFull(r, pc.buf, off); err != nil {
				pc.err = err
				close(pc.done)
				p.out <- pc
				return
			}
			p.out <- pc
			if hash {
				work <- pc
			} else {
				close(pc.done)
			}
		}
	})
	return p
}

// next returns the next piece in disk order, nil at the end.
func (p *pipeline) next(ctx context.Context) (*piece, error) {
	var pc *piece
	select {
	case pc = <-p.out:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if pc == nil {
		return nil, ctx.Err() // closed early only when ctx was cancelled
	}
	select {
	case <-pc.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return pc, pc.err
}

// release hands a piece's buffer back for reuse.
func (p *pipeline) release(pc *piece) {
	p.free <- pc.buf[:cap(pc.buf)]
}

func (p *pipeline) Close() {
	p.cancel()
	p.wg.Wait()
}

func readFull(r io.ReaderAt, buf []byte, off int64) (int, error) {
	n, err := r.ReadAt(buf, off)
	if n == len(buf) {
		return n, nil // io.ReaderAt may report io.EOF with a full read at the end
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return n, fmt.Errorf("read disk at %d (+%d): %w", off, len(buf), err)
}

// hashPiece fills pc.sums and pc.zero; zero is the sum of a whole zero block.
func hashPiece(pc *piece, blockSize int64, zeroBlock []byte, zero [32]byte) {
	n := (int64(len(pc.buf)) + blockSize - 1) / blockSize
	pc.sums = make([][32]byte, n)
	pc.zero = make([]bool, n)
	for i := range n {
		b := pc.buf[i*blockSize : min((i+1)*blockSize, int64(len(pc.buf)))]
		// Zero blocks are common (fresh disks, trimmed space); comparing
		// is several times faster than hashing, and the hash is implied.
		if bytes.Equal(b, zeroBlock[:len(b)]) {
			pc.zero[i] = true
			pc.sums[i] = zero
			if int64(len(b)) < blockSize {
				pc.sums[i] = zeroSum(int64(len(b))) // the disk's short last block
			}
			continue
		}
		pc.sums[i] = sha256.Sum256(b)
	}
}

// zeroSum returns the SHA-256 of n zero bytes.
func zeroSum(n int64) [32]byte {
	h := sha256.New()
	var z [4096]byte
	for n > 0 {
		k := min(n, int64(len(z)))
		h.Write(z[:k])
		n -= k
	}
	var s [32]byte
	h.Sum(s[:0])
	return s
}

// Fingerprints computes the SHA-256 of every blockSize block of [0, size)
// of r (the last block may be short) and calls fn for each in order.
func Fingerprints(ctx context.Context, r io.ReaderAt, size, blockSize int64, fn func(off int64, sum [32]byte) error) error {
	if size < 0 || blockSize <= 0 {
		return fmt.Errorf("fingerprints: bad size %d or block size %d", size, blockSize)
	}
	p := newPipeline(ctx, r, size, blockSize, true)
	defer p.Close()
	for {
		pc, err := p.next(ctx)
		if err != nil {
			return fmt.Errorf("fingerprints: %w", err)
		}
		if pc == nil {
			return nil
		}
		for i, s := range pc.sums {
			if err := fn(pc.off+int64(i)*blockSize, s); err != nil {
				return err
			}
		}
		p.release(pc)
	}
}

// Range is a byte range of a disk.
type Range struct {
	Off, Len int64
}

// End is the offset just past the range.
func (r Range) End() int64 { return r.Off + r.Len }

// Compare reads [0, size) of a and b in parallel and returns the blocks of
// blockSize that differ, adjacent ones coalesced, in order.
func Compare(ctx context.Context, a, b io.ReaderAt, size, blockSize int64) ([]Range, error) {
	if size < 0 || blockSize <= 0 {
		return nil, fmt.Errorf("compare: bad size %d or block size %d", size, blockSize)
	}
	pa := newPipeline(ctx, a, size, blockSize, false)
	defer pa.Close()
	pb := newPipeline(ctx, b, size, blockSize, false)
	defer pb.Close()
	var out []Range
	for {
		ca, err := pa.next(ctx)
		if err != nil {
			return nil, fmt.Errorf("compare: first disk: %w", err)
		}
		cb, err := pb.next(ctx)
		if err != nil {
			return nil, fmt.Errorf("compare: second disk: %w", err)
		}
		if ca == nil || cb == nil {
			return out, nil
		}
		// Most of a typical comparison is equal; check the whole piece
		// first and only walk blocks when it differs.
		if !bytes.Equal(ca.buf, cb.buf) {
			for o := int64(0); o < int64(len(ca.buf)); o += blockSize {
				e := min(o+blockSize, int64(len(ca.buf)))
				if bytes.Equal(ca.buf[o:e], cb.buf[o:e]) {
					continue
				}
				off := ca.off + o
				if k := len(out) - 1; k >= 0 && out[k].End() == off {
					out[k].Len += e - o
				} else {
					out = append(out, Range{Off: off, Len: e - o})
				}
			}
		}
		pa.release(ca)
		pb.release(cb)
	}
}
