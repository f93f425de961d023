"""The host side of serving: start the real tritonserver (`python -m serve`), keep it alive
(supervisor, watchdog) and probe the model with one real inference (health). What runs inside
Triton is the `engine` package, which export copies into every model version."""
