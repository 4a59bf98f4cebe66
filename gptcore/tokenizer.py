"""Tokenizers: GPT-2's byte-level BPE through tiktoken (fast), and characters (for tiny corpora).

Every tokenizer has encode(text) -> list[int], decode(ids) -> str, n_vocab, eot_token, and describe(): a small
JSON-able dict that tokenizer_from_description() turns back into the same tokenizer. Data folders and
checkpoints store that dict, so a model is always read and sampled with the tokenizer it was trained with.
Our own pure-Python BPE, which can also learn merges, is in gptcore/bpe.py; GPT-2's files and constants,
which both use, are in gptcore/gpt2_vocab.py.
"""

from .bpe import BPETokenizer
from .errors import GPTCoreError
from .gpt2_vocab import EOT, GPT2_EOT_ID, GPT2_SPLIT_PATTERN, gpt2_bpe_files


class GPT2Tokenizer:
    """OpenAI's GPT-2 BPE through tiktoken, built offline from the two original files."""

    def __init__(self):
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
        encoder_json, vocab_bpe = gpt2_bpe_files()
        ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=vocab_bpe, encoder_json_file=encoder_json)
        self.enc = tiktoken.Encoding(name="gpt2", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                                     special_tokens={EOT: GPT2_EOT_ID})
        self.n_vocab = self.enc.n_vocab
        self.eot_token = GPT2_EOT_ID

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Text -> ids. `<|endoftext|>` in the text is plain characters unless allow_special is set."""
        if allow_special:
            return self.enc.encode(text, allowed_special="all")
        return self.enc.encode_ordinary(text)

    def decode(self, ids) -> str:
        return self.enc.decode(list(ids))

    def describe(self) -> dict:
        return {"type": "gpt2"}


class CharTokenizer:
    """One id per character of a fixed alphabet, plus one for <|endoftext|> (the last id)."""

    def __init__(self, chars: str):
        self.chars = "".join(sorted(set(chars)))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.eot_token = len(self.chars)
        self.n_vocab = len(self.chars) + 1

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(text)

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        pieces = text.split(EOT) if allow_special else [text]
        ids = []
        for n, piece in enumerate(pieces):
            if n:
                ids.append(self.eot_token)
            try:
                ids.extend(self.stoi[c] for c in piece)
            except KeyError as e:
                raise GPTCoreError(f"character {e.args[0]!r} is not in this character-level tokenizer's "
                                   f"{len(self.chars)}-character alphabet; use only characters from its training text") from None
        return ids

    def decode(self, ids) -> str:
        return "".join(EOT if i == self.eot_token else self.chars[i] for i in ids)

    def describe(self) -> dict:
        return {"type": "char", "chars": self.chars}


def get_tokenizer(name: str = "gpt2"):
    """The GPT-2 tokenizer by name: 'gpt2' is tiktoken's, 'gpt2-python' our own pure-Python BPE (same ids)."""
    if name == "gpt2":
        return GPT2Tokenizer()
    if name == "gpt2-python":
        return BPETokenizer.from_gpt2_files()
    raise GPTCoreError(f"unknown tokenizer '{name}'; known: gpt2, gpt2-python (a char tokenizer is built from text)")


def tokenizer_from_description(desc: dict):
    """Rebuilds a tokenizer from what its describe() returned."""
    kind = desc.get("type")
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "char":
        return CharTokenizer(desc["chars"])
    if kind == "bpe":
        return BPETokenizer.from_description(desc)
    raise GPTCoreError(f"unknown tokenizer type {kind!r} in a data folder or checkpoint; known: gpt2, char, bpe")
