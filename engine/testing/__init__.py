"""Conversation tests as data (`engine test`), and the offline sessions they run on.

Modules (each imported on its own, so `engine check x.test.yaml` loads only the format):
    offline: `run_offline`, one session of a flow against the in-process simulator on virtual time.
    format: the `*.test.yaml` format (pydantic models, JSON Schema, `load`, `check`).
    expect: what a session did (from its trace and report), and the expectations checked on it.
    runner: `engine test`: finding test files, worker processes, the printed lines, JUnit XML.
"""
