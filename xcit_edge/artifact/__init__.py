"""Artifacts on disk: the manifest (written, and read as untrusted input), opening an artifact for a
runtime, and the runtime-defaults run in a child process."""
