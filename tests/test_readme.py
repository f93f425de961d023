"""README.md's ```sh blocks run verbatim, in order, on this machine, in the state `make demo` leaves.

The rules README.md is written to (this test holds it to them):

- A block fenced ```sh is run. Any other fence is shown, not run: ```console for what a reader types
  with its output, a server left running, a Telegram token, Docker or a GPU.
- Each line of a block is one command; a line ending in `\\` goes on in the next. Blank lines and
  lines starting with `#` are skipped; a `# comment` after a command is bash's to ignore.
- `make demo` and `make venv` (the setup itself) and `make test` (this suite) are skipped.
- Each command runs as `bash -c COMMAND` (no `set -e`, no pipefail: as typed into a shell) from the
  root of a scratch copy of the repository in the state `make demo` leaves: .venv/ and .venv-triton/,
  output/ with a tiny model trained on training/data.csv and its checkpoints, model_repository/
  rudialogpt/ with its export (version 1); no Triton running, no TELEGRAM_*, TRITON_*, BOT_*, DEMO_*
  variables, stdin empty (a console chat ends at once). Only files carry over from one command to
  the next (not `cd`, not `export`). Write the Python as `.venv/bin/python -m ...`.
- It must exit 0 within TIMEOUT seconds.
- A command ending in ` &` starts a Triton server (`.venv/bin/python -m serve ... &`) in the
  background: the next command runs once Triton is ready on the HTTP port it names (`--http-port N`,
  else 8000). It must not exit; it is stopped (Ctrl-C) after the last block. Where that port is
  taken on this machine, the test skips.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.readme import after_demo, readme_commands, run_readme, sh_commands, triton_ready


def scratch(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A scratch copy of the repository in the state `make demo` leaves (the session's tiny model
    and export: trained and exported here only once a README has commands to run)."""
    checkpoint = request.getfixturevalue("tiny_checkpoint")
    return after_demo(tmp_path / "repo", checkpoint, request.getfixturevalue("model_repository"))


@pytest.mark.timeout(1800)
def test_readme_sh_blocks_run_verbatim(request, tmp_path):
    readme_commands(ROOT / "README.md")  # skips while it has no ```sh block
    run_readme(ROOT / "README.md", scratch(request, tmp_path))


# -- the machinery, on READMEs of its own ----------------------------------------------------------

SAMPLE = """# A README

```console
$ make demo
[1/4] train: ...
```

```sh
make demo   # the setup: skipped
# a comment line

ls output/checkpoints \\
   model_repository/rudialogpt/1/model.onnx
.venv/bin/python -m export --list   # version 1, from the demo's export
```

Then a server and a chat with it:

```sh
.venv/bin/python -m serve --repository model_repository --http-port {http} --grpc-port {grpc} \\
    --metrics-port {metrics} &
.venv/bin/python -m serve.health --url 127.0.0.1:{http}
echo Привет | TRITON_URL=127.0.0.1:{http} .venv/bin/python -m bot --console --max-new-tokens 8 | grep .
```

```bash
rm -rf output   # not run: only ```sh blocks are
```
"""


def test_sh_commands_follow_the_rules():
    commands = sh_commands(SAMPLE.format(http=1, grpc=2, metrics=3))
    assert [(c.line, c.background) for c in commands] == [
        (12, False),
        (14, False),
        (20, True),
        (22, False),
        (23, False),
    ]
    assert commands[0].text == "ls output/checkpoints \\\n   model_repository/rudialogpt/1/model.onnx"
    assert commands[2].text.endswith("--metrics-port 3")  # the & is the runner's
    assert all("rm -rf" not in c.text and "make demo" not in c.text for c in commands)


def test_a_readme_without_sh_blocks_skips(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Soon\n\n```console\n$ make demo\n```\n")
    with pytest.raises(pytest.skip.Exception, match=r"README\.md has no ```sh block yet"):
        readme_commands(readme)


@pytest.mark.timeout(600)
def test_a_readme_runs_in_the_state_make_demo_leaves(request, tmp_path):
    from serve.server import free_ports

    http, grpc, metrics = free_ports(3)
    readme = tmp_path / "README.md"
    readme.write_text(SAMPLE.format(http=http, grpc=grpc, metrics=metrics), encoding="utf-8")
    run_readme(readme, scratch(request, tmp_path))
    assert not triton_ready(http)  # the server was stopped


def test_a_failing_command_is_named_with_its_output(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("```sh\necho fine\necho what went wrong >&2; exit 3\necho never\n```\n")
    with pytest.raises(pytest.fail.Exception) as failed:
        run_readme(readme, tmp_path)
    assert str(failed.value) == (
        "README.md line 3: `echo what went wrong >&2; exit 3` exited 3; its output:\nwhat went wrong\n"
    )


def test_a_command_past_its_timeout_is_ended(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("```sh\necho started; sleep 60\n```\n")
    t0 = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match=r"`echo started; sleep 60` did not end within 1 s"):
        run_readme(readme, tmp_path, timeout=1)
    assert time.monotonic() - t0 < 10
