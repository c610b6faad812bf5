"""This machine as a device: calibrate measures it, validate compares both engines with a real replay on it."""
