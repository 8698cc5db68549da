package frame

import (
	"bytes"
	"encoding/binary"
	"io"
	"runtime"
	"testing"
)

const maxSize = 32 << 20 // a sync answer's bound

type trickle struct{ b []byte }

func (t *trickle) Read(p []byte) (int, error) {
	if len(t.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, t.b)
	t.b = t.b[n:]
	return n, nil
}

// A sync answer that announces 32 MiB and sends 10 bytes makes the node
// allocate about what arrived, not what was announced.
func TestReadGrowingAllocatesWhatArrives(t *testing.T) {
	f := binary.AppendUvarint(nil, maxSize)
	f = append(f, bytes.Repeat([]byte{1}, 10)...)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := ReadGrowing(&trickle{b: f}, maxSize)
	runtime.ReadMemStats(&after)
	if err == nil {
		t.Fatal("a short frame was read whole")
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Fatalf("reading a 10-byte frame that announced %d bytes allocated %d bytes", maxSize, grew)
	}
	full := append(binary.AppendUvarint(nil, 5), "hello"...)
	if got, err := ReadGrowing(&trickle{b: full}, maxSize); err != nil || string(got) != "hello" {
		t.Fatalf("a whole frame: %q, %v", got, err)
	}
	if _, err := ReadGrowing(&trickle{b: binary.AppendUvarint(nil, maxSize+1)}, maxSize); err == nil {
		t.Fatal("a frame over the limit was accepted")
	}
}
