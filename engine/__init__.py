"""The model Triton runs: export copies this package whole into every version folder, beside
`contract/`, and points the version's model.py at `engine.model`. It imports nothing from the
host side (serve/, export/) and runs as well in-process (tests, bench) as inside Triton."""
