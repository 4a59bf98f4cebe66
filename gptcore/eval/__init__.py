"""Zero-shot evaluation: HellaSwag, LAMBADA and WikiText-2 perplexity on one scoring core (see scoring.py)."""
