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
