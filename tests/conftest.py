"""Test-session settings shared by every test directory."""

# The DDP fit scripts run in subprocesses (tests/callbacks/test_ddp*.py). Collecting them for
# doctests would import them into this session and run their module-level setup (channel_ddp_fit
# wraps the file-writing functions with spies).
collect_ignore = ["ddp_scripts"]
