// Package frame reads length-prefixed frames from peers without trusting
// the length they announce.
package frame

import (
	"bufio"
	"encoding/binary"
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
