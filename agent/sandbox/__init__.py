"""Isolation for the code interpreter: detection, bubblewrap, Landlock + seccomp."""
