package imagefmt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

const (
	// chunkSize is the largest single read from the source and the unit
	// handed from the reader to the writer. Reads of a few MiB are what it
	// takes for a disk (and the kernel's readahead) to stream; larger ones
	// only add memory.
	chunkSize = 8 << 20
	// chunkBuffers bounds memory to chunkBuffers*chunkSize and lets the
	// reader work on the next chunks while the writer writes one.
	chunkBuffers = 4
	// maxGap: extents closer than this share a chunk, the gap between them
	// read as zeros from memory rather than costing another write call.
	maxGap = 1 << 20
	// progressEvery keeps Progress calls to about five a second.
	progressEvery = 200 * time.Millisecond
)

// chunk is one unit of work from the reader to the writer: a granule-aligned
// piece of the disk and which of its granules are not all zeros.
type chunk struct {
	buf  []byte // capacity chunkSize
	off  int64  // disk offset of buf[0], a multiple of the granule
	n    int    // bytes of buf in use, a multiple of the granule
	runs []span // non-zero granules, merged into runs, ascending
}

// span is [start, end) within a chunk's buf.
type span struct{ start, end int }

// imageWriter is one format's encoder. put is called with chunks in
// ascending disk order; finish writes whatever metadata the format keeps
// until the end. Neither syncs: Write does that once for all files.
type imageWriter interface {
	put(c *chunk) (dataBytes int64, err error)
	finish(ctx context.Context) error
}

// pump streams src into w. The reader runs in its own goroutine so that
// reading the source, looking for zeros and writing the image overlap.
func pump(ctx context.Context, src Source, size int64, gran int, w imageWriter, progress func(done int64)) (int64, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	free := make(chan *chunk, chunkBuffers)
	for range chunkBuffers {
		free <- &chunk{buf: make([]byte, chunkSize)}
	}
	full := make(chan *chunk, chunkBuffers)
	r := &reader{src: src, size: size, gran: gran, zero: make([]byte, gran), free: free, out: full}

	var readErr error
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer close(full)
		readErr = r.run(ctx)
	}()

	var data int64
	var writeErr error
	for c := range full {
		if writeErr == nil {
			if err := ctx.Err(); err != nil {
				writeErr = context.Cause(ctx)
			} else {
				n, err := w.put(c)
				data += n
				if err != nil {
					writeErr = err
					cancel(err)
				} else {
					progress(min(c.off+int64(c.n), size))
				}
			}
		}
		free <- c
	}
	<-readDone
	if writeErr != nil {
		return data, writeErr
	}
	if readErr != nil {
		return data, readErr
	}
	return data, context.Cause(ctx)
}

// reader turns the source's extents into chunks: extents are rounded out to
// whole granules (the part outside an extent reads as zeros without asking
// the source), small gaps are filled with zeros so that nearby extents share
// one chunk, and each granule is checked for being all zeros.
type reader struct {
	src  Source
	size int64
	gran int
	zero []byte
	free <-chan *chunk
	out  chan<- *chunk

	cur     *chunk
	fill    int   // bytes of cur.buf holding defined content
	lastEnd int64 // end of the previous extent, to check the order
}

func (r *reader) run(ctx context.Context) error {
	if err := r.src.Extents(ctx, func(off, n int64) error { return r.extent(ctx, off, n) }); err != nil {
		return fmt.Errorf("imagefmt: walk source extents: %w", err)
	}
	return r.flush(ctx)
}

func (r *reader) extent(ctx context.Context, off, n int64) error {
	if n < 0 || off < 0 || off > r.size || n > r.size-off {
		return fmt.Errorf("imagefmt: source extent [%d, +%d) is outside the disk (size %d)", off, n, r.size)
	}
	if off < r.lastEnd {
		return fmt.Errorf("imagefmt: source extent at %d overlaps or precedes the previous one ending at %d", off, r.lastEnd)
	}
	end := off + n
	r.lastEnd = end
	for off < end {
		if r.cur != nil {
			curEnd := r.cur.off + int64(r.fill)
			if off >= r.cur.off+int64(len(r.cur.buf)) ||
				alignDown(off, int64(r.gran))-alignUp(curEnd, int64(r.gran)) >= maxGap {
				if err := r.flush(ctx); err != nil {
					return err
				}
			}
		}
		if r.cur == nil {
			select {
			case r.cur = <-r.free:
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			r.cur.off = alignDown(off, int64(r.gran))
			r.fill = 0
		}
		rel := int(off - r.cur.off)
		clear(r.cur.buf[r.fill:rel])
		m := int(min(end-off, int64(len(r.cur.buf)-rel)))
		if err := readFull(r.src, r.cur.buf[rel:rel+m], off); err != nil {
			return err
		}
		r.fill = rel + m
		off += int64(m)
	}
	return nil
}

// flush completes the current chunk to whole granules, finds its non-zero
// runs and hands it to the writer.
func (r *reader) flush(ctx context.Context) error {
	c := r.cur
	if c == nil {
		return nil
	}
	r.cur = nil
	c.n = int(alignUp(int64(r.fill), int64(r.gran)))
	clear(c.buf[r.fill:c.n])
	c.runs = c.runs[:0]
	for g := 0; g < c.n; g += r.gran {
		if bytes.Equal(c.buf[g:g+r.gran], r.zero) {
			continue
		}
		if k := len(c.runs); k > 0 && c.runs[k-1].end == g {
			c.runs[k-1].end = g + r.gran
		} else {
			c.runs = append(c.runs, span{g, g + r.gran})
		}
	}
	select {
	case r.out <- c:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// readFull reads exactly len(p) bytes; io.ReaderAt may report io.EOF
// together with a full read at the end of the source.
func readFull(src Source, p []byte, off int64) error {
	n, err := src.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("imagefmt: read source at %d (+%d): %w", off, len(p), err)
}

func alignDown(x, a int64) int64 { return x / a * a }
func alignUp(x, a int64) int64   { return (x + a - 1) / a * a }
