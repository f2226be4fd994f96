"""Group-adaptive policy gradient, adaptive prompt filtering and Lagrangian budget control (SPEC §3-5)."""
