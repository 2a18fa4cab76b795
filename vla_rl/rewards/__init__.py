"""Reward models beyond sparse success (SRPO's progress), the trajectory encoders they use, and
the reward-quality measurement."""
