package refused

import "testing"

// Key names bytes by their parts: the same concatenation split
// differently (a record's body and signature) is another item, and must
// be another key.
func TestKeySplitsDiffer(t *testing.T) {
	if Key("record", []byte("ab"), []byte("c")) == Key("record", []byte("a"), []byte("bc")) {
		t.Fatal("two splits of the same bytes have the same key")
	}
}
