//go:build meshsim && !race

package node_test

const raceEnabled = false
