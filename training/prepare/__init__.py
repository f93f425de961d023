"""The training CSV from chat exports: `python -m training.prepare <source> ...` (docs/prepare.md).

Each source has its module (telegram.py: Telegram Desktop's JSON export; history.py: the bot's
own history, the replies users liked); they share the turn and row rules (dialogues.py) and the
CSV writing (output.py)."""
