"""The thin client of the served model: tokenizer, transport (HTTP), rounds, sampling and the
generate loop, following the model version that answers. No Telegram, no storage, no torch: the
bot, bench and demo use it, and it imports none of them."""
