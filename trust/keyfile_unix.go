//go:build unix

package trust

import (
	"os"
	"syscall"
)

// processOwner returns the effective uid of the process, and true on
// systems where files have a uid.
func processOwner() (int, bool) { return os.Geteuid(), true }

// fileOwner returns the uid that owns the file st describes (-1 if st does
// not say, which no process runs as: the check then fails closed).
func fileOwner(st os.FileInfo) int {
	s, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return -1
	}
	return int(s.Uid)
}
