"""What every stage must agree on, with no heavy imports.

`contract.dialogue`: the ruDialoGPT dialogue format (turn markers, prompt building, trimming).
`contract.triton_io`: the served model's I/O contract (tensor names, dtypes, sequence protocol).
`contract.repository`: the model repository's layout (versions, their tokenizers) and the tokenizer rule.

training, export, the Triton model and the bot all import this package; it imports only the
standard library, so the bot's slim image and the Triton python backend can carry it.
"""
