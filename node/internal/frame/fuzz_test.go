package frame

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// FuzzReadGrowing reads arbitrary bytes as a peer's length-prefixed
// frame: nothing may panic, a frame is returned only when its announced
// length is within the bound and that many bytes followed, and it is
// exactly those bytes. Seeds live in testdata/fuzz/.
func FuzzReadGrowing(f *testing.F) {
	f.Add(append(binary.AppendUvarint(nil, 5), "hello"...), uint16(64))
	f.Add(binary.AppendUvarint(nil, 1<<40), uint16(64))
	f.Add([]byte{0x80}, uint16(1))
	f.Fuzz(func(t *testing.T, data []byte, max uint16) {
		got, err := ReadGrowing(bytes.NewReader(data), int(max))
		if err != nil {
			return
		}
		n, k := binary.Uvarint(data)
		if k <= 0 || n > uint64(max) || uint64(len(got)) != n || !bytes.Equal(got, data[k:k+int(n)]) {
			t.Fatalf("read %d bytes from %x (bound %d)", len(got), data, max)
		}
	})
}

// FuzzReadExact reads arbitrary bytes as a stream of frames with
// ReadExact: it must agree with ReadGrowing on the first frame, and read
// no byte past it (the rest is the next frame's). Seeds live in
// testdata/fuzz/.
func FuzzReadExact(f *testing.F) {
	f.Add(append(append(binary.AppendUvarint(nil, 5), "hello"...), 0), uint16(64))
	f.Add([]byte{0, 3, 'a', 'b', 'c'}, uint16(8))
	f.Add(binary.AppendUvarint(nil, 1<<40), uint16(64))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02}, uint16(64))
	f.Fuzz(func(t *testing.T, data []byte, max uint16) {
		r := bytes.NewReader(data)
		got, err := ReadExact(r, int(max))
		want, werr := ReadGrowing(bytes.NewReader(data), int(max))
		if (err == nil) != (werr == nil) || !bytes.Equal(got, want) {
			t.Fatalf("ReadExact %x, %v; ReadGrowing %x, %v (bound %d, input %x)", got, err, want, werr, max, data)
		}
		if err != nil {
			return
		}
		if got == nil {
			t.Fatal("an empty frame read as nil")
		}
		_, k := binary.Uvarint(data)
		if rest := r.Len(); rest != len(data)-k-len(got) {
			t.Fatalf("read %d bytes past a frame of %d (input %x)", len(data)-k-len(got)-rest, len(got), data)
		}
	})
}
