"""Collaboration environments and the tasks they pose (SPEC §1-2)."""
