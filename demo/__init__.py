"""`make demo`: train (if needed), export (if needed), start Triton, chat."""
