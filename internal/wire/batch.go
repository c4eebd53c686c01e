package wire

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Op is what a record does to a replica disk.
type Op uint8

const (
	// OpWrite is a captured workload write: it must be durable at every hop
	// before the hop upstream may drop it.
	OpWrite Op = 1
	// OpZero is a captured TRIM or WRITE_ZEROES: the range reads as zeros.
	OpZero Op = 2
	// OpCopy is data read from the source disk by the initial copy, a resync
	// or a scan pass. It can always be read again, so hops need not fsync it;
	// the agent keeps the range dirty until the master target confirms it.
	OpCopy Op = 3
	// OpCopyZero is a copied range that is all zeros (sent without data).
	OpCopyZero Op = 4
	// OpEpoch closes an epoch: everything before it is a crash-consistent
	// state of all the machine's disks. Flags say why it was closed.
	OpEpoch Op = 5
	// OpSyncDone says a disk's resync finished: the replica is consistent
	// again from this record on.
	OpSyncDone Op = 6
	// OpSyncStart says the replica of a disk stops being consistent here: a
	// gap (queue overflow, crash recovery, initial copy) is about to be filled
	// by copies, and no point before OpSyncDone may be offered for recovery.
	OpSyncStart Op = 7
	// OpBookmark closes an epoch like OpEpoch and names it: its data is a
	// JSON Bookmark. App-consistent bookmarks are inserted while the
	// workload is frozen and the agent holds writes, across all disks.
	OpBookmark Op = 8
)

func (o Op) String() string {
	switch o {
	case OpWrite:
		return "write"
	case OpZero:
		return "zero"
	case OpCopy:
		return "copy"
	case OpCopyZero:
		return "copy-zero"
	case OpEpoch:
		return "epoch"
	case OpSyncDone:
		return "sync-done"
	case OpSyncStart:
		return "sync-start"
	case OpBookmark:
		return "bookmark"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// HasData reports whether records of this op carry a payload.
func (o Op) HasData() bool { return o == OpWrite || o == OpCopy || o == OpBookmark }

// Modifies reports whether the record changes disk content.
func (o Op) Modifies() bool {
	return o == OpWrite || o == OpZero || o == OpCopy || o == OpCopyZero
}

// ClosesEpoch reports whether the record ends an epoch.
func (o Op) ClosesEpoch() bool { return o == OpEpoch || o == OpBookmark }

// Captured reports whether records of this op must be durable before an
// acknowledgment travels upstream.
func (o Op) Captured() bool { return o != OpCopy && o != OpCopyZero }

// Epoch flags.
const (
	EpochFlush = 1 << 0 // closed by FLUSH or FUA from the workload
	EpochTimer = 1 << 1 // closed by the agent's timer
	EpochScan  = 1 << 2 // end of a scan pass (consistent only if the source was frozen)
	EpochSize  = 1 << 3 // closed by the agent because the epoch reached MaxEpochBytes
)

// MaxEpochBytes bounds the captured data of one epoch: the agent closes an
// epoch when it reaches this size. The master target applies whole epochs
// and holds one entirely (read-ahead, intake) while it waits for the
// marker, so an unbounded epoch (a second of writes at disk speed, with no
// flush) could outgrow its intake: the marker then waits for room that
// only applying the epoch can free.
const MaxEpochBytes = 16 << 20

// Record is one change to one disk of a machine.
type Record struct {
	Seq    uint64
	Disk   uint16
	Op     Op
	Flags  uint8
	Offset uint64
	Length uint32 // range length; for data ops len(Data)
	Data   []byte
}

// record header: seq u64, disk u16, op u8, flags u8, offset u64, length u32
const recordHeaderSize = 8 + 2 + 1 + 1 + 8 + 4

// batch header: first u64, last u64, count u32
const batchHeaderSize = 8 + 8 + 4

// MaxRecordLength bounds one record's range.
const MaxRecordLength = 32 << 20

// Batch is a run of records of one machine in sequence order.
type Batch struct {
	First, Last uint64
	Records     []Record
}

// Captured reports whether the batch holds anything that must be fsynced.
func (b *Batch) Captured() bool {
	for i := range b.Records {
		if b.Records[i].Op.Captured() {
			return true
		}
	}
	return false
}

// FirstOp is the op of an encoded batch's first record, read without
// decoding the batch; false if buf holds no record. The agent never mixes
// copies and captured records in one batch, so it tells a batch of copies
// from the rest.
func FirstOp(buf []byte) (Op, bool) {
	if len(buf) < batchHeaderSize+recordHeaderSize || binary.LittleEndian.Uint32(buf[16:]) == 0 {
		return 0, false
	}
	return Op(buf[batchHeaderSize+10]), true
}

// EncodedSize is the size AppendBatch will produce.
func (b *Batch) EncodedSize() int {
	n := batchHeaderSize
	for i := range b.Records {
		n += recordHeaderSize + len(b.Records[i].Data)
	}
	return n
}

// AppendBatch encodes b after dst.
func AppendBatch(dst []byte, b *Batch) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, b.First)
	dst = binary.LittleEndian.AppendUint64(dst, b.Last)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(b.Records)))
	for i := range b.Records {
		dst = appendRecordHeader(dst, &b.Records[i])
		dst = append(dst, b.Records[i].Data...)
	}
	return dst
}

func appendRecordHeader(dst []byte, r *Record) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, r.Seq)
	dst = binary.LittleEndian.AppendUint16(dst, r.Disk)
	dst = append(dst, byte(r.Op), r.Flags)
	dst = binary.LittleEndian.AppendUint64(dst, r.Offset)
	return binary.LittleEndian.AppendUint32(dst, r.Length)
}

// BatchParts encodes b as the parts of one payload, for
// Conn.WriteFrameParts: record data of at least minRef bytes is referred
// to, not copied (a batch of copies is megabytes read from the disk); the
// headers and smaller data are encoded into buf, reused from the last call.
// The concatenated parts equal AppendBatch's encoding. The parts alias buf
// and the records' data until the next call.
func BatchParts(buf []byte, parts [][]byte, b *Batch, minRef int) ([]byte, [][]byte) {
	n := batchHeaderSize
	for i := range b.Records {
		n += recordHeaderSize
		if len(b.Records[i].Data) < minRef {
			n += len(b.Records[i].Data)
		}
	}
	// Sized up front: a part is a slice of buf, which must not move.
	if cap(buf) < n {
		buf = make([]byte, 0, n)
	}
	buf = buf[:0]
	parts = parts[:0]
	buf = binary.LittleEndian.AppendUint64(buf, b.First)
	buf = binary.LittleEndian.AppendUint64(buf, b.Last)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(b.Records)))
	from := 0 // start of buf not yet in parts
	for i := range b.Records {
		r := &b.Records[i]
		buf = appendRecordHeader(buf, r)
		if len(r.Data) < minRef {
			buf = append(buf, r.Data...)
			continue
		}
		parts = append(parts, buf[from:len(buf):len(buf)], r.Data)
		from = len(buf)
	}
	if from < len(buf) {
		parts = append(parts, buf[from:len(buf):len(buf)])
	}
	return buf, parts
}

// DecodeBatch decodes and validates a batch. Record data aliases buf.
// Validation is strict because a record applied at the wrong place is silent
// corruption: sequence numbers strictly increase inside [First, Last], ops
// are known, data lengths match.
func DecodeBatch(buf []byte) (Batch, error) {
	var b Batch
	if len(buf) < batchHeaderSize {
		return b, fmt.Errorf("%w: batch of %d bytes is shorter than its header", ErrCorrupt, len(buf))
	}
	b.First = binary.LittleEndian.Uint64(buf[0:])
	b.Last = binary.LittleEndian.Uint64(buf[8:])
	n := binary.LittleEndian.Uint32(buf[16:])
	if b.First > b.Last {
		return b, fmt.Errorf("%w: batch first seq %d > last %d", ErrCorrupt, b.First, b.Last)
	}
	rest := buf[batchHeaderSize:]
	if uint64(n) > uint64(len(rest)/recordHeaderSize) {
		return b, fmt.Errorf("%w: batch claims %d records in %d bytes", ErrCorrupt, n, len(rest))
	}
	b.Records = make([]Record, 0, n)
	prev := uint64(0)
	for i := uint32(0); i < n; i++ {
		if len(rest) < recordHeaderSize {
			return b, fmt.Errorf("%w: record %d truncated", ErrCorrupt, i)
		}
		r := Record{
			Seq:    binary.LittleEndian.Uint64(rest[0:]),
			Disk:   binary.LittleEndian.Uint16(rest[8:]),
			Op:     Op(rest[10]),
			Flags:  rest[11],
			Offset: binary.LittleEndian.Uint64(rest[12:]),
			Length: binary.LittleEndian.Uint32(rest[20:]),
		}
		rest = rest[recordHeaderSize:]
		if r.Op < OpWrite || r.Op > OpBookmark {
			return b, fmt.Errorf("%w: record %d (seq %d) has unknown op %d", ErrCorrupt, i, r.Seq, r.Op)
		}
		if r.Seq < b.First || r.Seq > b.Last || (i > 0 && r.Seq <= prev) {
			return b, fmt.Errorf("%w: record %d seq %d out of order (batch %d..%d, previous %d)", ErrCorrupt, i, r.Seq, b.First, b.Last, prev)
		}
		if r.Length > MaxRecordLength {
			return b, fmt.Errorf("%w: record seq %d length %d exceeds %d", ErrCorrupt, r.Seq, r.Length, MaxRecordLength)
		}
		if r.Offset > 1<<62 {
			return b, fmt.Errorf("%w: record seq %d offset %d out of range", ErrCorrupt, r.Seq, r.Offset)
		}
		if r.Op.HasData() {
			if uint64(len(rest)) < uint64(r.Length) {
				return b, fmt.Errorf("%w: record seq %d wants %d data bytes, %d left", ErrCorrupt, r.Seq, r.Length, len(rest))
			}
			r.Data = rest[:r.Length:r.Length]
			rest = rest[r.Length:]
		}
		prev = r.Seq
		b.Records = append(b.Records, r)
	}
	if len(rest) != 0 {
		return b, fmt.Errorf("%w: %d trailing bytes after batch", ErrCorrupt, len(rest))
	}
	return b, nil
}

// Ack acknowledges a prefix of the stream.
//
// Cached: every record with seq <= Cached is held durably by the receiver
// (captured records fsynced; copy records at least received).
// Durable: every record with seq <= Durable, copies included, is durable at
// the master target; the agent completes resync ranges on this.
type Ack struct {
	Cached  uint64
	Durable uint64
}

const ackSize = 16

// AppendAck encodes an ack.
func AppendAck(dst []byte, a Ack) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, a.Cached)
	return binary.LittleEndian.AppendUint64(dst, a.Durable)
}

// DecodeAck decodes an ack.
func DecodeAck(b []byte) (Ack, error) {
	if len(b) != ackSize {
		return Ack{}, fmt.Errorf("%w: ack of %d bytes (want %d)", ErrCorrupt, len(b), ackSize)
	}
	return Ack{Cached: binary.LittleEndian.Uint64(b), Durable: binary.LittleEndian.Uint64(b[8:])}, nil
}

// DiskInfo describes one protected disk in a Hello.
type DiskInfo struct {
	Index uint16 `json:"index"`
	Name  string `json:"name"`
	Size  int64  `json:"size"`
}

// Hello opens a session. The sender's identity comes from its TLS
// certificate, never from here; Machine must match it for agents.
type Hello struct {
	Role    string     `json:"role"`
	Machine string     `json:"machine"`
	Disks   []DiskInfo `json:"disks"`
}

// Welcome answers a Hello with where the receiver's durable state ends, so
// the sender resumes without gaps or duplicates it cannot absorb.
type Welcome struct {
	Cached  uint64 `json:"cached"`
	Durable uint64 `json:"durable"`
}

// ErrorMsg is sent before a peer closes a session it refuses.
type ErrorMsg struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *ErrorMsg) Error() string { return e.Code + ": " + e.Message }

// PreferRefusal is how a session's end is told: first, the first error
// from errc, unless it is not the peer's refusal and that refusal (an
// *ErrorMsg) follows on errc within grace. A peer that refuses a session
// (a full disk, a bad batch) sends why and hangs up, and the hang-up often
// reaches the writer first, as a reset that says nothing of the cause.
func PreferRefusal(first error, errc <-chan error, grace time.Duration) error {
	var em *ErrorMsg
	if first == nil || errors.As(first, &em) {
		return first
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	for {
		select {
		case err, ok := <-errc:
			if !ok {
				return first // closed: nothing more can come
			}
			if errors.As(err, &em) {
				return err
			}
		case <-t.C:
			return first
		}
	}
}

// WriteJSON sends a JSON control frame.
func (c *Conn) WriteJSON(t Type, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("wire: encoding %s: %w", t, err)
	}
	return c.WriteFrame(t, b, CodecNone)
}

// ReadJSON reads one frame that must be of type want (or an ErrorMsg, which
// is returned as the error).
func (c *Conn) ReadJSON(want Type, v any) error {
	t, p, err := c.ReadFrame()
	if err != nil {
		return err
	}
	if t == TypeError {
		var em ErrorMsg
		if err := json.Unmarshal(p, &em); err != nil {
			return fmt.Errorf("wire: %w: undecodable error frame: %v", ErrCorrupt, err)
		}
		return &em
	}
	if t != want {
		return fmt.Errorf("wire: %w: expected %s frame, got %s", ErrCorrupt, want, t)
	}
	if err := json.Unmarshal(p, v); err != nil {
		return fmt.Errorf("wire: %w: decoding %s: %v", ErrCorrupt, want, err)
	}
	return nil
}

// ValidName reports whether s may name a machine or disk: it becomes a
// file name on the process server and master target.
func ValidName(s string) bool {
	if s == "" || len(s) > 128 || s == "." || s == ".." {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// ValidateBatch checks every record against a machine's disks: a record
// naming a disk that does not exist or reaching past a disk's end is
// refused, never clipped.
func ValidateBatch(b *Batch, disks []DiskInfo) error {
	for _, r := range b.Records {
		if r.Op.ClosesEpoch() {
			continue
		}
		if int(r.Disk) >= len(disks) {
			return fmt.Errorf("record seq %d names disk %d, the machine has %d", r.Seq, r.Disk, len(disks))
		}
		if r.Op == OpSyncStart || r.Op == OpSyncDone {
			continue
		}
		if end := r.Offset + uint64(r.Length); end > uint64(disks[r.Disk].Size) {
			return fmt.Errorf("record seq %d (%s) ends at %d, beyond disk %s of %d bytes", r.Seq, r.Op, end, disks[r.Disk].Name, disks[r.Disk].Size)
		}
	}
	return nil
}

// Bookmark is the payload of an OpBookmark record.
type Bookmark struct {
	Kind  string `json:"kind"` // "app" (hooks ran) or "tag"
	Name  string `json:"name,omitempty"`
	Group string `json:"group,omitempty"`
	ID    string `json:"id,omitempty"` // shared by every machine of a group bookmark
	Time  int64  `json:"time_unix_nano"`
	Hooks int    `json:"hooks"`
	// HeldNanos is how long the agent held writes for the marker.
	HeldNanos int64 `json:"held_nanos"`
}
