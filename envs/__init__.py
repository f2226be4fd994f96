"""Collaboration environments and the tasks they pose (docs/method.md §1-2)."""
