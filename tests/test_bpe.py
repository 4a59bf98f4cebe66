"""gptcore.bpe against independent references.

GPT-2: our pure-Python BPE must give tiktoken's ids on real text, hand-made edge cases and arbitrary strings.
Training: merges must equal those of a naive trainer (all pairs recounted every step), and encoding must equal
applying the merges one after another in training order, the textbook definition of BPE.
"""

import json
import unicodedata
from collections import Counter
from pathlib import Path

import pytest
import regex
import tiktoken
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptcore.bpe import BPETokenizer, bytes_to_unicode
from gptcore.errors import GPTCoreError
from gptcore.gpt2_vocab import gpt2_bpe_files
from gptcore.tokenizer import EOT, GPT2_SPLIT_PATTERN, GPT2Tokenizer, get_tokenizer, tokenizer_from_description

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATA_FILES = ["tinyshakespeare.txt", "wikitext2_test.txt", "hellaswag_val.jsonl", "lambada_openai.jsonl"]
SLICE_CHARS = 50_000
NUM_MERGES = 300

# tiktoken's Rust regex and the `regex` module each bundle their own Unicode tables, and `regex`'s are newer:
# code points that Python's unicodedata does not assign (Cn) may be letters to one and unassigned to the other,
# and then split differently. Parity is claimed, and tested exhaustively below, for every assigned character.
ASSIGNED_TEXT = st.text(st.characters(exclude_categories=("Cs", "Cn")))
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Characters where GPT-2's split rules meet: contraction letters, apostrophes, spaces of several kinds, digits,
# accents, combining marks, CJK, right-to-left scripts, emoji with joiners and skin tones, and the special token.
TRICKY = st.lists(st.sampled_from([
    " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "'", "’", "s", "S", "t", "re", "ve", "m", "ll", "d", "D", "LL",
    "a", "Z", "1", "42", "٣", "½", "é", "e\u0301", "中文", "ש", "مرحبا", "😀", "👩\u200d💻", "👍🏽", "!", "?!",
    ".", "_", "$", EOT, "<|", "|>", "\x00", "\ufffd",
]), max_size=24).map("".join)


@pytest.fixture(scope="module")
def gpt2():
    return BPETokenizer()  # no arguments: OpenAI's GPT-2 merges, as in minGPT


@pytest.fixture(scope="module")
def tik():
    return GPT2Tokenizer().enc


def read_slice(name: str, start: int = 0, n: int = SLICE_CHARS) -> str:
    with open(DATA / name, encoding="utf-8") as f:
        return f.read()[start:start + n]


# ---- GPT-2: same ids as tiktoken

def test_gpt2_vocabulary(gpt2):
    assert gpt2.n_vocab == 50257
    assert gpt2.eot_token == 50256
    assert gpt2.decode([gpt2.eot_token]) == EOT
    assert len(set(gpt2.vocab)) == len(gpt2.vocab)  # no two ids decode to the same bytes


def test_byte_to_unicode_mapping_is_a_printable_bijection():
    mapping = bytes_to_unicode()
    assert sorted(mapping) == list(range(256))
    assert len(set(mapping.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in mapping.values())
    assert mapping[ord(" ")] == "Ġ" and mapping[ord("A")] == "A"


@pytest.mark.parametrize("name", DATA_FILES)
def test_gpt2_matches_tiktoken_on_real_text(gpt2, tik, name):
    text = read_slice(name)
    ids = gpt2.encode(text)
    assert ids == tik.encode_ordinary(text)
    assert gpt2.decode(ids) == text


EDGE_CASES = [
    "",
    " ",
    "\n",
    "Hello world",
    "Crème brûlée à la française, naïve café",
    "e\u0301 a\u0308 n\u0303 (combining marks)",
    "中文文本，日本語のテキスト、한국어 텍스트",
    "שלום עולם, مرحبا بالعالم",
    "emoji 😀👍🏽 family 👨\u200d👩\u200d👧\u200d👦 coder 👩\u200d💻 flag 🏳️\u200d🌈",
    "many    spaces   here",
    "tabs\t\tand\t \t mixed",
    "lines\n\n\nand\r\nwindows\r\n",
    "trailing spaces   ",
    "trailing newlines\n\n",
    "   leading spaces",
    " \t\n \t\n",
    "it's don't we're they've I'm you'll he'd",
    "IT'S DON'T WE'RE THEY'VE I'M YOU'LL HE'D",
    "Jack'S book, the dog'S bone",
    "'s 't 're 've 'm 'll 'd at the start",
    "curly quotes don’t count",
    "12345678901234567890 3.14159 1,000,000 ٣٤٥ ½",
    "x = foo(bar[1]) + baz->qux; // code {}",
    "a<|endoftext|>b",
    "<|endoftext|>",
    "<|endoftext|><|endoftext|> and <|endoftext",
    "\x00\x01\x7f control bytes",
    "\ufeffbyte order mark, \u200bzero width space",
]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_gpt2_matches_tiktoken_on_edge_cases(gpt2, tik, text):
    assert gpt2.encode(text) == tik.encode_ordinary(text)
    assert gpt2.encode(text, allow_special=True) == tik.encode(text, allowed_special="all")
    assert gpt2.decode(gpt2.encode(text)) == text


def test_endoftext_is_text_unless_allowed(gpt2):
    text = "one<|endoftext|>two"
    assert gpt2.eot_token not in gpt2.encode(text)
    special = gpt2.encode(text, allow_special=True)
    assert special.count(gpt2.eot_token) == 1
    assert special == gpt2.encode("one") + [gpt2.eot_token] + gpt2.encode("two")
    assert gpt2.decode(special) == text


@PROPERTY
@given(st.text())
def test_gpt2_roundtrip_arbitrary_text(gpt2, text):
    assert gpt2.decode(gpt2.encode(text)) == text


def test_regex_engines_agree_on_every_assigned_character():
    """Python's `regex` and tiktoken's Rust regex put each assigned character in the same pattern classes.

    tiktoken keeps only the regex's matches, so an Encoding whose pattern is one class and whose tokens are the
    256 bytes returns exactly the characters the Rust engine puts in that class.
    """
    assigned = "".join(chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) not in ("Cs", "Cn"))
    byte_ranks = {bytes([b]): b for b in range(256)}
    for char_class in (r"\p{L}", r"\p{N}", r"\s"):
        rust = tiktoken.Encoding(name="class probe", pat_str=char_class, mergeable_ranks=byte_ranks, special_tokens={})
        in_rust = bytes(rust.encode_ordinary(assigned)).decode("utf-8")
        in_python = "".join(regex.findall(char_class, assigned))
        assert in_python == in_rust, f"{char_class}: the two engines disagree on assigned characters"


@PROPERTY
@given(st.one_of(ASSIGNED_TEXT, TRICKY))
def test_gpt2_matches_tiktoken_on_arbitrary_text(gpt2, tik, text):
    assert gpt2.encode(text) == tik.encode_ordinary(text)
    assert gpt2.encode(text, allow_special=True) == tik.encode(text, allowed_special="all")


@PROPERTY
@given(st.lists(st.integers(0, 50256), max_size=40))
def test_gpt2_decode_matches_tiktoken_including_broken_utf8(gpt2, tik, ids):
    # token sequences cut inside a multi-byte character must give U+FFFD the way tiktoken does
    assert gpt2.decode(ids) == tik.decode(ids)


def test_gpt2_by_name_and_description(tik):
    tok = get_tokenizer("gpt2-python")
    assert isinstance(tok, BPETokenizer)
    desc = tok.describe()
    assert json.loads(json.dumps(desc)) == desc
    rebuilt = tokenizer_from_description(desc)
    assert isinstance(rebuilt, BPETokenizer)
    text = read_slice("wikitext2_test.txt", 0, 3000)
    assert rebuilt.encode(text) == tok.encode(text) == tik.encode_ordinary(text)


# ---- minGPT's interface: tok(text) -> (1, T) tensor, tok.decode(1-D tensor), tok.encoder.encoder

@pytest.mark.parametrize("name", DATA_FILES)
def test_mingpt_call_matches_tiktoken_on_held_out_text(gpt2, tik, name):
    text = read_slice(name, 600_000, 20_000)  # far from the slices the tests above read
    x = gpt2(text)
    assert x.dtype == torch.long and x.shape == (1, len(x[0]))
    assert x[0].tolist() == tik.encode_ordinary(text)
    assert gpt2.decode(x[0]) == text
    assert gpt2.decode(x[0].flip(0)) == tik.decode(x[0].flip(0).tolist())  # out-of-order ids, broken UTF-8 too


def test_mingpt_token_table_is_openais_encoder_json(gpt2):
    with open(gpt2_bpe_files()[0], encoding="utf-8") as f:
        assert gpt2.encoder.encoder == json.load(f)
    assert gpt2.encoder.encoder["<|endoftext|>"] == 50256  # what minGPT's generate notebook reads
    assert all(gpt2.encoder.decoder[i] == token for token, i in gpt2.encoder.encoder.items())


def test_mingpt_call_on_empty_text_and_a_batch_to_decode(gpt2):
    assert gpt2("").shape == (1, 0)
    with pytest.raises(GPTCoreError, match=r"1-D tensor.*shape \(1, 2\).*y\[0\]"):
        gpt2.decode(gpt2("hi there"))


def test_constructor_needs_both_halves_of_a_trained_tokenizer():
    with pytest.raises(GPTCoreError, match="both byte_values and merges"):
        BPETokenizer(list(range(256)))
    with pytest.raises(GPTCoreError, match="both byte_values and merges"):
        BPETokenizer(merges=[(1, 2)])


# ---- training

def naive_train(text: str, num_merges: int) -> list[tuple[int, int]]:
    """Textbook BPE training: recount every pair over every chunk at each step (slow, obviously right)."""
    split = regex.compile(GPT2_SPLIT_PATTERN)
    chunks = Counter(c for doc in text.split(EOT) for c in split.findall(doc))
    words = {tuple(chunk.encode("utf-8")): n for chunk, n in chunks.items()}
    merges = []
    for new_id in range(256, 256 + num_merges):
        counts = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                counts[pair] += n
        best = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))
        merges.append(best)
        words = {tuple(replace_pair(list(word), best, new_id)): n for word, n in words.items()}
    return merges


def replace_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Left to right, so (1, 1) in [1, 1, 1] -> [new, 1]; a merged token is never pair[0], it is a new id."""
    out = []
    for i in ids:
        if out and out[-1] == pair[0] and i == pair[1]:
            out[-1] = new_id
        else:
            out.append(i)
    return out


def naive_encode(text: str, merges: list[tuple[int, int]]) -> list[int]:
    """Encodes by applying each merge, in training order, to every chunk."""
    ids = []
    for chunk in regex.findall(GPT2_SPLIT_PATTERN, text):
        word = list(chunk.encode("utf-8"))
        for k, pair in enumerate(merges):
            word = replace_pair(word, pair, 256 + k)
        ids.extend(word)
    return ids


@pytest.fixture(scope="module")
def trained():
    return BPETokenizer.train(read_slice("tinyshakespeare.txt", 0, 60_000), NUM_MERGES, progress=False)


@pytest.fixture(scope="module")
def held_out():
    return read_slice("tinyshakespeare.txt", 700_000, 20_000)


def test_trained_vocabulary_grows_by_the_merges(trained):
    assert trained.n_vocab == 256 + NUM_MERGES + 1
    assert trained.eot_token == 256 + NUM_MERGES
    assert len(trained.merges) == NUM_MERGES


def test_training_matches_naive_trainer():
    text = read_slice("tinyshakespeare.txt", 0, 8_000)
    ours = BPETokenizer.train(text, 120, progress=False)
    assert ours.merges == naive_train(text, 120)


def test_trained_encoding_applies_merges_in_training_order(trained, held_out):
    sample = held_out[:4_000]
    assert trained.encode(sample) == naive_encode(sample, trained.merges)


def test_trained_roundtrip_and_compression(trained, held_out):
    ids = trained.encode(held_out)
    assert trained.decode(ids) == held_out
    assert len(ids) < 0.6 * len(held_out.encode("utf-8"))
    assert max(ids) < trained.eot_token


@PROPERTY
@given(st.one_of(st.text(), TRICKY))
def test_trained_roundtrip_arbitrary_text(trained, text):
    assert trained.decode(trained.encode(text)) == text
    assert trained.decode(trained.encode(text, allow_special=True)) == text


def test_trained_description_rebuilds_identical_tokenizer(trained, held_out):
    desc = trained.describe()
    assert desc["type"] == "bpe"
    restored = json.loads(json.dumps(desc))
    assert restored == desc  # only JSON types: no tuples, bytes or numpy ints
    rebuilt = tokenizer_from_description(restored)
    assert rebuilt.merges == trained.merges
    assert rebuilt.n_vocab == trained.n_vocab
    assert rebuilt.encode(held_out) == trained.encode(held_out)


def test_trained_endoftext(trained):
    text = "First document.<|endoftext|>Second one."
    special = trained.encode(text, allow_special=True)
    assert special.count(trained.eot_token) == 1
    assert special == trained.encode("First document.") + [trained.eot_token] + trained.encode("Second one.")
    plain = trained.encode(text)
    assert trained.eot_token not in plain
    assert trained.decode(plain) == trained.decode(special) == text


def test_training_does_not_learn_the_endoftext_marker():
    # one document per speech: the marker is the commonest 'word' here, so a trainer that saw it would learn it
    speeches = read_slice("tinyshakespeare.txt", 0, 20_000).split("\n\n")
    tok = BPETokenizer.train(EOT.join(speeches), 200, progress=False)
    assert not any(b"endoftext" in token or b"<|" in token for token in tok.vocab)


def test_training_is_deterministic():
    text = read_slice("tinyshakespeare.txt", 100_000, 10_000)
    assert BPETokenizer.train(text, 80, progress=False).merges == BPETokenizer.train(text, 80, progress=False).merges


# ---- bad input fails with one clear line

def test_too_many_merges_for_the_text():
    with pytest.raises(GPTCoreError, match="at most 3 merges"):
        BPETokenizer.train("abcd", 10, progress=False)


@pytest.mark.parametrize("num_merges", [-1, 2.5, "10", True])
def test_bad_num_merges(num_merges):
    with pytest.raises(GPTCoreError, match="num_merges"):
        BPETokenizer.train("some text", num_merges, progress=False)


@pytest.mark.parametrize("desc", [
    {"type": "bpe"},
    {"type": "bpe", "name": "gpt5"},
    {"type": "bpe", "merges": [[1, 2, 3]]},
    {"type": "bpe", "merges": [["a", "b"]]},
    {"type": "bpe", "merges": [[1, 300]]},
])
def test_bad_description(desc):
    with pytest.raises(GPTCoreError):
        BPETokenizer.from_description(desc)


def test_decode_rejects_ids_outside_the_vocabulary(trained):
    with pytest.raises(GPTCoreError, match="outside"):
        trained.decode([1, trained.n_vocab])
    with pytest.raises(GPTCoreError, match="outside"):
        trained.decode([-1])


def test_encode_rejects_bytes(trained):
    with pytest.raises(GPTCoreError, match="needs a str"):
        trained.encode(b"bytes are not text")
