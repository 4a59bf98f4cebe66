"""Token ids to streamed text: whole UTF-8 characters only, and nothing that could still turn into a stop string."""


class TextStream:
    """Turns the ids of one generation, pushed one at a time, into pieces of text.

    A byte-level BPE token can end in the middle of a UTF-8 character: such tokens are held back until the
    character is complete. Text that could be the start of a stop string is held back until it can't; when a
    stop string appears, the text before it is the last piece. Joined, the pieces are the decoded text up to the
    first stop string.
    """

    def __init__(self, tokenizer, stop=()):
        self.tokenizer, self.stop = tokenizer, tuple(stop)
        self.ids = []  # tokens not yet decoded (an incomplete character)
        self.held = ""  # decoded text not yet given out (a possible start of a stop string)

    def push(self, token: int) -> tuple[str, bool]:
        """-> (the text that is now safe to give out, whether a stop string has appeared)."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return "", False
        self.ids = []
        text = self.held + text
        found = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if found:
            self.held = ""
            return text[:min(found)], True
        keep = self._possible_stop_start(text)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def _possible_stop_start(self, text: str) -> int:
        """The length of the longest end of text that is the beginning of a stop string."""
        for n in range(min(len(text), max((len(s) for s in self.stop), default=1) - 1), 0, -1):
            if any(s.startswith(text[-n:]) for s in self.stop):
                return n
        return 0

    def flush(self) -> str:
        """Everything held back, once the generation has ended."""
        text = self.held + (self.tokenizer.decode(self.ids) if self.ids else "")
        self.ids, self.held = [], ""
        return text


def decode_stream(tokenizer, ids):
    """Token ids (any iterable of ints) -> pieces of text as soon as they are whole; joined, tokenizer.decode(ids)."""
    stream = TextStream(tokenizer)
    for i in ids:
        text, _ = stream.push(i)
        if text:
            yield text
    if rest := stream.flush():
        yield rest
