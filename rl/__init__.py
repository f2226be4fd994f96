"""Group-adaptive policy gradient, adaptive prompt filtering and Lagrangian budget control (docs/method.md §3-5)."""
