"""promptroute's front door: the `promptroute` command and the in-process Python API. Imports
every other package; nothing imports it."""
