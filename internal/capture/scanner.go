package capture

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"time"
)

// Scanner fingerprint file layout (little endian):
//
//	header (40 bytes): magic "STBYSCN1", version u32, reserved u32,
//	    disk size u64, block size u64, fingerprints per chunk u32,
//	    crc32c of the preceding 36 bytes
//	chunks: up to fpPerChunk SHA-256 sums (32 bytes each), then
//	    crc32c(chunk index u64 || sums)
//
// The file is streamed, never held in memory: a pass reads the committed
// file alongside the disk and writes the pending one. Per-chunk checksums
// catch damage before a damaged fingerprint can hide a change.
const (
	scanMagic       = "STBYSCN1"
	scanHeaderSize  = 40
	fpPerChunk      = 4096
	scanVersion     = 1
	maxScanBlockLen = 1 << 30
	// maxMerge caps one Change (the brief's transport unit).
	maxMerge = 4 << 20
)

// ScanOptions configure a Scanner.
type ScanOptions struct {
	BlockSize int64 // fingerprint granule, default 64 KiB
	Logger    *slog.Logger
}

// Change is a changed region found by a pass. Data is only valid during
// the callback (it points into a reused read buffer).
type Change struct {
	Off  int64
	Len  int64  // bytes covered; len(Data) when !Zero
	Data []byte // nil if Zero
	Zero bool   // the region is now all zeros
}

// PassStats summarises a pass.
type PassStats struct {
	Scanned      int64 // bytes read
	Changed      int64 // changed blocks
	ChangedBytes int64
	Duration     time.Duration
}

// Scanner finds blocks of a disk that changed since the last committed pass.
type Scanner struct {
	path      string
	log       *slog.Logger
	diskSize  int64
	blockSize int64

	mu        sync.Mutex // one Pass or Commit at a time
	committed bool       // a committed fingerprint file exists
	pending   bool       // a complete pass waits in path+".pending"
}

// OpenScanner prepares scan mode for a disk of diskSize bytes with
// fingerprints kept at statePath. A missing file means no previous pass:
// the far end is taken to be all zeros, so every non-zero block is
// changed. A file for another disk size is an error wrapping
// ErrSizeMismatch, a damaged header one wrapping ErrCorruptState; removing
// the file starts over with a full pass.
func OpenScanner(statePath string, diskSize int64, opts ScanOptions) (*Scanner, error) {
	if opts.BlockSize == 0 {
		opts.BlockSize = 64 << 10
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if diskSize < 0 || opts.BlockSize <= 0 || opts.BlockSize > maxScanBlockLen {
		return nil, fmt.Errorf("open scanner: bad disk size %d or block size %d", diskSize, opts.BlockSize)
	}
	s := &Scanner{
		path:      statePath,
		log:       opts.Logger.With("state", statePath),
		diskSize:  diskSize,
		blockSize: opts.BlockSize,
	}
	// A pending file left by a crash was never confirmed by the far end.
	if err := os.Remove(s.pendingPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("open scanner: remove stale pending fingerprints: %w", err)
	}
	f, err := os.Open(statePath)
	if errors.Is(err, fs.ErrNotExist) {
		s.log.Info("capture: no fingerprint file, next pass is a full one")
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open scanner: %w", err)
	}
	defer f.Close()
	hdr := make([]byte, scanHeaderSize)
	if _, err := io.ReadFull(f, hdr); err != nil {
		return nil, fmt.Errorf("open scanner %s: %w: header: %v", statePath, ErrCorruptState, err)
	}
	ds, bs, err := decodeScanHeader(hdr)
	if err != nil {
		return nil, fmt.Errorf("open scanner %s: %w", statePath, err)
	}
	if ds != diskSize {
		return nil, fmt.Errorf("open scanner %s: %w: file has %d bytes, disk has %d", statePath, ErrSizeMismatch, ds, diskSize)
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("open scanner: %w", err)
	}
	if want := scanFileSize(ds, bs); fi.Size() != want {
		return nil, fmt.Errorf("open scanner %s: %w: %d bytes, want %d", statePath, ErrCorruptState, fi.Size(), want)
	}
	if bs != opts.BlockSize {
		s.log.Info("capture: fingerprint file block size differs from options; using the file's", "block_size", bs)
	}
	s.blockSize = bs
	s.committed = true
	return s, nil
}

// BlockSize is the fingerprint granule in use.
func (s *Scanner) BlockSize() int64 { return s.blockSize }

func (s *Scanner) pendingPath() string { return s.path + ".pending" }

func encodeScanHeader(diskSize, blockSize int64) []byte {
	b := make([]byte, scanHeaderSize)
	copy(b, scanMagic)
	binary.LittleEndian.PutUint32(b[8:], scanVersion)
	binary.LittleEndian.PutUint64(b[16:], uint64(diskSize))
	binary.LittleEndian.PutUint64(b[24:], uint64(blockSize))
	binary.LittleEndian.PutUint32(b[32:], fpPerChunk)
	binary.LittleEndian.PutUint32(b[36:], crc32.Checksum(b[:36], castagnoli))
	return b
}

func decodeScanHeader(b []byte) (diskSize, blockSize int64, err error) {
	if len(b) < scanHeaderSize || string(b[:8]) != scanMagic {
		return 0, 0, fmt.Errorf("%w: not a fingerprint file", ErrCorruptState)
	}
	if crc32.Checksum(b[:36], castagnoli) != binary.LittleEndian.Uint32(b[36:]) {
		return 0, 0, fmt.Errorf("%w: fingerprint header checksum mismatch", ErrCorruptState)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != scanVersion {
		return 0, 0, fmt.Errorf("%w: fingerprint file version %d", ErrCorruptState, v)
	}
	ds := binary.LittleEndian.Uint64(b[16:])
	bs := binary.LittleEndian.Uint64(b[24:])
	if ds > maxDiskSize || bs == 0 || bs > maxScanBlockLen || binary.LittleEndian.Uint32(b[32:]) != fpPerChunk {
		return 0, 0, fmt.Errorf("%w: fingerprint header out of range", ErrCorruptState)
	}
	return int64(ds), int64(bs), nil
}

func scanFileSize(diskSize, blockSize int64) int64 {
	n := (diskSize + blockSize - 1) / blockSize
	chunks := (n + fpPerChunk - 1) / fpPerChunk
	return scanHeaderSize + 32*n + 4*chunks
}

// fpReader streams the committed fingerprints, verifying each chunk.
type fpReader struct {
	r     *bufio.Reader
	left  int64 // fingerprints not yet returned
	chunk int64
	buf   []byte // current chunk's sums + crc
	pos   int
}

func (fr *fpReader) next() ([32]byte, error) {
	var s [32]byte
	if fr.pos == len(fr.buf)-4 || fr.buf == nil {
		n := min(fr.left, fpPerChunk)
		if int64(cap(fr.buf)) < 32*n+4 {
			fr.buf = make([]byte, 32*n+4)
		}
		fr.buf = fr.buf[:32*n+4]
		if _, err := io.ReadFull(fr.r, fr.buf); err != nil {
			return s, fmt.Errorf("%w: fingerprint chunk %d: %v", ErrCorruptState, fr.chunk, err)
		}
		var idx [8]byte
		binary.LittleEndian.PutUint64(idx[:], uint64(fr.chunk))
		c := crc32.Update(crc32.Checksum(idx[:], castagnoli), castagnoli, fr.buf[:32*n])
		if c != binary.LittleEndian.Uint32(fr.buf[32*n:]) {
			return s, fmt.Errorf("%w: fingerprint chunk %d checksum mismatch", ErrCorruptState, fr.chunk)
		}
		fr.chunk++
		fr.pos = 0
	}
	copy(s[:], fr.buf[fr.pos:])
	fr.pos += 32
	fr.left--
	return s, nil
}

// fpWriter streams pending fingerprints in chunks.
type fpWriter struct {
	w     *bufio.Writer
	chunk int64
	buf   []byte
}

func (fw *fpWriter) add(s [32]byte) error {
	fw.buf = append(fw.buf, s[:]...)
	if len(fw.buf) == 32*fpPerChunk {
		return fw.flushChunk()
	}
	return nil
}

func (fw *fpWriter) flushChunk() error {
	if len(fw.buf) == 0 {
		return nil
	}
	var idx [8]byte
	binary.LittleEndian.PutUint64(idx[:], uint64(fw.chunk))
	c := crc32.Update(crc32.Checksum(idx[:], castagnoli), castagnoli, fw.buf)
	fw.buf = binary.LittleEndian.AppendUint32(fw.buf, c)
	if _, err := fw.w.Write(fw.buf); err != nil {
		return err
	}
	fw.chunk++
	fw.buf = fw.buf[:0]
	return nil
}

// Pass reads the whole disk through r and calls fn, in disk order, for
// every region whose blocks changed since the last committed pass; runs of
// changed blocks are merged up to 4 MiB, and regions that became all zeros
// are reported with Zero set and no data. The pass's fingerprints are kept
// pending until Commit; another Pass without Commit compares against the
// same committed pass again, so nothing is lost if the far end never got
// this one. An error from fn aborts the pass and is returned.
func (s *Scanner) Pass(ctx context.Context, r io.ReaderAt, fn func(Change) error) (PassStats, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	start := time.Now()
	s.pending = false
	st, err := s.pass(ctx, r, fn)
	st.Duration = time.Since(start)
	if err != nil {
		if rerr := os.Remove(s.pendingPath()); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			s.log.Warn("capture: could not remove pending fingerprints", "err", rerr)
		}
		return st, fmt.Errorf("scan pass: %w", err)
	}
	s.pending = true
	s.log.Debug("capture: scan pass done", "scanned", st.Scanned, "changed_blocks", st.Changed,
		"changed_bytes", st.ChangedBytes, "duration", st.Duration)
	return st, nil
}

func (s *Scanner) pass(ctx context.Context, r io.ReaderAt, fn func(Change) error) (st PassStats, err error) {
	bs := s.blockSize
	nBlocks := (s.diskSize + bs - 1) / bs

	var prev *fpReader
	if s.committed {
		cf, err := os.Open(s.path)
		if err != nil {
			return st, fmt.Errorf("open committed fingerprints: %w", err)
		}
		defer cf.Close()
		if _, err := cf.Seek(scanHeaderSize, io.SeekStart); err != nil {
			return st, fmt.Errorf("seek committed fingerprints: %w", err)
		}
		prev = &fpReader{r: bufio.NewReaderSize(cf, 1<<20), left: nBlocks}
	}

	pf, err := os.Create(s.pendingPath())
	if err != nil {
		return st, fmt.Errorf("create pending fingerprints: %w", err)
	}
	defer func() {
		if cerr := pf.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close pending fingerprints: %w", cerr)
		}
	}()
	bw := bufio.NewWriterSize(pf, 1<<20)
	if _, err := bw.Write(encodeScanHeader(s.diskSize, bs)); err != nil {
		return st, fmt.Errorf("write pending fingerprints: %w", err)
	}
	fw := &fpWriter{w: bw, buf: make([]byte, 0, 32*fpPerChunk+4)}

	// Without a committed pass the far end is taken to be zeros.
	fullZero := zeroSum(bs)
	lastLen := s.diskSize - (nBlocks-1)*bs
	lastZero := zeroSum(lastLen)

	p := newPipeline(ctx, r, s.diskSize, bs, true)
	defer p.Close()
	for {
		pc, err := p.next(ctx)
		if err != nil {
			return st, err
		}
		if pc == nil {
			break
		}
		st.Scanned += int64(len(pc.buf))
		// run is the pending Change being grown within this piece.
		var run Change
		var runStart int64 = -1
		flush := func() error {
			if runStart < 0 {
				return nil
			}
			if !run.Zero {
				run.Data = pc.buf[runStart : runStart+run.Len]
			}
			runStart = -1
			if err := fn(run); err != nil {
				return fmt.Errorf("change at %d: %w", run.Off, err)
			}
			return nil
		}
		for i, sum := range pc.sums {
			blk := pc.off/bs + int64(i)
			var old [32]byte
			if prev != nil {
				if old, err = prev.next(); err != nil {
					return st, err
				}
			} else if blk == nBlocks-1 {
				old = lastZero
			} else {
				old = fullZero
			}
			if err := fw.add(sum); err != nil {
				return st, fmt.Errorf("write pending fingerprints: %w", err)
			}
			o := int64(i) * bs
			l := min(bs, int64(len(pc.buf))-o)
			if sum == old {
				if err := flush(); err != nil {
					return st, err
				}
				continue
			}
			st.Changed++
			st.ChangedBytes += l
			if runStart >= 0 && run.Zero == pc.zero[i] && run.Len+l <= maxMerge {
				run.Len += l
				continue
			}
			if err := flush(); err != nil {
				return st, err
			}
			run = Change{Off: pc.off + o, Len: l, Zero: pc.zero[i]}
			runStart = o
		}
		if err := flush(); err != nil {
			return st, err
		}
		p.release(pc)
	}
	if err := fw.flushChunk(); err != nil {
		return st, fmt.Errorf("write pending fingerprints: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return st, fmt.Errorf("write pending fingerprints: %w", err)
	}
	// Sync now, while the pass is still running in the caller's eyes, so
	// Commit is a cheap rename when the far end confirms.
	if err := pf.Sync(); err != nil {
		return st, fmt.Errorf("sync pending fingerprints: %w", err)
	}
	return st, nil
}

// Commit records that the far end durably has the last pass: its
// fingerprints become the reference for the next pass. Crash-safe: the
// pending file replaces the committed one by an atomic rename.
func (s *Scanner) Commit() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.pending {
		return errors.New("commit scan pass: no completed pass pending")
	}
	if err := renameDurable(s.pendingPath(), s.path); err != nil {
		return fmt.Errorf("commit scan pass: %w", err)
	}
	s.pending = false
	s.committed = true
	return nil
}
