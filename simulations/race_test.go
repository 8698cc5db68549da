//go:build meshsim && race

package simulations_test

const raceScale = 4

// raceEnabled: the virtual-time tests skip themselves under -race, where
// ThreadSanitizer crashes inside testing/synctest bubbles on Go 1.26
// (SIGSEGV in __tsan::SlotLock from internal/synctest.Run, seen here twice;
// golang/go#78156). make test runs them without -race.
const raceEnabled = true
