package imagefmt

import (
	"context"
	"fmt"
	"os"
)

// rawWriter writes a raw image (also the flat extent of a VMDK): data at its
// own offset, zero granules never written so they stay holes in the new file.
type rawWriter struct {
	f    *os.File
	size int64 // final file size
	wb   *writeBehind
}

func (w *rawWriter) put(c *chunk) (int64, error) {
	var data int64
	for _, r := range c.runs {
		off := c.off + int64(r.start)
		if off >= w.size {
			break
		}
		// Whole granules are written even past the end; finish truncates.
		if _, err := w.f.WriteAt(c.buf[r.start:r.end], off); err != nil {
			return data, fmt.Errorf("imagefmt: write %s at %d: %w", w.f.Name(), off, err)
		}
		data += min(c.off+int64(r.end), w.size) - off
	}
	return data, w.wb.advance(c.off + int64(c.n))
}

func (w *rawWriter) finish(context.Context) error {
	if err := w.f.Truncate(w.size); err != nil {
		return fmt.Errorf("imagefmt: set size of %s: %w", w.f.Name(), err)
	}
	return nil
}
