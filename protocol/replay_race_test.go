//go:build race

package protocol

// replayRaceEnabled: the replay guard's long simulations (millions of
// envelopes) run scaled down under the race detector.
const replayRaceEnabled = true
