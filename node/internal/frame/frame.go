// Package frame reads length-prefixed frames from peers without trusting
// the length they announce.
package frame

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"

	"github.com/libp2p/go-msgio"
)

// ReadGrowing reads one length-prefixed frame of at most max bytes, its
// buffer growing with the bytes that arrive: a peer that announces a large
// frame and sends little makes the node hold what it sent, not what it
// announced.
func ReadGrowing(r io.Reader, max int) ([]byte, error) {
	br := bufio.NewReaderSize(r, 4096)
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return nil, err
	}
	if n > uint64(max) {
		return nil, msgio.ErrMsgTooLarge
	}
	buf, err := io.ReadAll(io.LimitReader(br, int64(n)))
	if err != nil {
		return nil, err
	}
	if uint64(len(buf)) != n {
		return nil, io.ErrUnexpectedEOF
	}
	return buf, nil
}

// ReadExact is ReadGrowing without reading past the frame's end, for a
// stream that carries more frames after it (another reader, or the next
// call, reads those). A frame of length zero is returned as an empty,
// non-nil slice.
func ReadExact(r io.Reader, max int) ([]byte, error) {
	var b [1]byte
	var n uint64
	for i := 0; ; i++ {
		if i == binary.MaxVarintLen64 {
			return nil, errVarint
		}
		if _, err := io.ReadFull(r, b[:]); err != nil {
			if i > 0 && err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if i == binary.MaxVarintLen64-1 && b[0] > 1 {
			return nil, errVarint
		}
		n |= uint64(b[0]&0x7f) << (7 * i)
		if b[0] < 0x80 {
			break
		}
	}
	if n > uint64(max) {
		return nil, msgio.ErrMsgTooLarge
	}
	// Grow with what arrives: at most 4 KiB ahead of the bytes read.
	buf := make([]byte, 0, min(n, 4096))
	for uint64(len(buf)) < n {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		m, err := r.Read(buf[len(buf):min(uint64(cap(buf)), n)])
		buf = buf[:len(buf)+m]
		if err != nil && uint64(len(buf)) < n {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return buf, nil
}

var errVarint = errors.New("frame: length prefix overflows 64 bits")
