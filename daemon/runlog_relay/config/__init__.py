"""Configuration: the shared rules and models, and the sidecar's settings (no I/O at import).

Nothing is imported with the package itself: a sidecar imports
:mod:`runlog_relay.config.settings` without pydantic, and the pydantic models
(:mod:`runlog_relay.config.models`) are imported by the modules that use them.
"""
