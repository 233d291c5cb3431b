"""Task-side helpers used by tasks/*/utils.py: scoring, LiveCodeBench grading, the sandbox, task data."""
