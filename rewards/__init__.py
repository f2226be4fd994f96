"""Graders (math-verify, Countdown, arithmetic) and the collaboration reward (SPEC §3, §7)."""
