//go:build !race

package protocol

const replayRaceEnabled = false
