"""Text corpus, tokenizer and token batches (see docs/corpus.md)."""
