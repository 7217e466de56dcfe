"""Simulation: many virtual nodes on one machine, each with a slice of a real data set."""
