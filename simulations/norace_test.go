//go:build !race

package simulations_test

const raceScale = 1

const raceEnabled = false
