"""Test support for the checkpoint importer: foreign layouts rebuilt from their published structure, and
the Ultralytics oracle (the real package, installed in a cache folder, never in the project's venv)."""
