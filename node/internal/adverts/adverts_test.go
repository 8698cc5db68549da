package adverts

import (
	"testing"

	"github.com/meshagent/meshagent/discovery"
)

// The cache holds at most CacheEntries advertisements and CacheBytes of
// them, the least recently used going first; one larger than CacheBytes
// is not cached at all.
func TestCacheBounds(t *testing.T) {
	s := New(Deps{})
	ad := func(i int, size int) *discovery.Advertisement {
		a := &discovery.Advertisement{Size: size}
		a.Digest[0], a.Digest[1] = byte(i), byte(i>>8)
		return a
	}
	first := ad(0, 100)
	s.store(first)
	for i := 1; i < 1000; i++ {
		s.lookup(first.Digest) // kept in use: never the one evicted
		s.store(ad(i, 100))
	}
	if n, size := s.Cached(); n != CacheEntries || size != CacheEntries*100 {
		t.Fatalf("%d entries, %d bytes", n, size)
	}
	if s.lookup(first.Digest) == nil {
		t.Fatal("the entry in use was evicted")
	}
	for i := range 40 {
		s.store(ad(2000+i, discovery.MaxAdvertSize))
	}
	if n, size := s.Cached(); size > CacheBytes || n > CacheEntries {
		t.Fatalf("%d entries, %d bytes", n, size)
	}
	s.store(ad(5000, CacheBytes+1))
	if s.lookup(ad(5000, 0).Digest) != nil {
		t.Fatal("an advertisement over the cache's size was cached")
	}
}
