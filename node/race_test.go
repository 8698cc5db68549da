//go:build meshsim && race

package node_test

// raceEnabled: attacks whose measure is the target's CPU time skip
// themselves under -race, whose slowdown they would measure instead; make
// test runs them without it.
const raceEnabled = true
