"""The chat bot: a thin Triton client (tokenizers + numpy + tritonclient) for console and Telegram."""
