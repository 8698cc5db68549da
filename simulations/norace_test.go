//go:build !race

package simulations_test

const raceScale = 1
