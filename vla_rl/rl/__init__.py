"""RL math shared by the methods: advantages, policy losses, n-step returns, the replay buffer,
LoRA, critics. Small pure functions and modules, each with hand-checked tests."""
