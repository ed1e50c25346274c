"""Coral demos: a live view with boxes (``live``) and an object counter (``count``), on a Pi or a laptop."""
