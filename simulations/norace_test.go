//go:build meshsim && !race

package simulations_test

const raceScale = 1

const raceEnabled = false
