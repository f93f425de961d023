"""Local serving: the real tritonserver binary from the nvidia-pytriton wheel, on the CPU.

Importing the package imports nothing else: the bot's image carries only `serve/health.py`.
"""


def __getattr__(name: str) -> object:
    if name in ("TritonServer", "TritonServerError"):
        from serve import server

        return getattr(server, name)
    raise AttributeError(name)
