"""Demonstrations: LeRobot v3.0 datasets, LIBERO HDF5 files, episodes from rollouts, and the
(frame, chunk) pairs behaviour cloning trains on."""
