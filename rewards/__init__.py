"""Graders (math-verify, Countdown, arithmetic) and the collaboration reward (docs/method.md §3, §7)."""
