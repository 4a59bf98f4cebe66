"""The OpenAI request shapes the server accepts, their checks, and the chat template.

Requests are validated strictly (a string is not a number, 1.5 is not an integer, NaN is not a temperature) and
unknown fields are refused, so a client that asks for something this server does not do hears so at once instead
of getting a silently different answer. Every failure becomes an APIError naming the offending field.

The chat template (a base model has no chat format of its own, so this is plain text it can continue):

    {system content}            <- each system message, as is, then a blank line
    User: {user content}
    Assistant: {assistant content}
    ...
    Assistant:

The model writes the reply after the final "Assistant:"; it ends at <|endoftext|>, at the stop string
"\\nUser:" (the model starting the next turn itself), at any `stop` string of the request, or at max_tokens.
Leading whitespace of the reply is dropped.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

CHAT_STOP = "\nUser:"
MAX_STOP_STRINGS = 4  # as OpenAI


class APIError(Exception):
    """An error answered as OpenAI does: {"error": {"message", "type", "param", "code"}} with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, type: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool = False  # one last chunk, with no choices, carries the usage


class _Sampling(_Strict):
    """The fields both endpoints share."""
    model: str
    temperature: float = Field(1.0, ge=0)  # 0 is greedy
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)  # an extension: OpenAI has no top_k
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = Field(None, validate_default=True)  # -> a list
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted and ignored, as an end-user id is only for the caller's bookkeeping

    @field_validator("stop")
    @classmethod
    def _stop(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOP_STRINGS or not all(stops):
            raise ValueError(f"give at most {MAX_STOP_STRINGS} non-empty stop strings")
        return stops

    def sampling(self) -> dict:
        """The engine's sampling arguments; temperature 0 means greedy, top_p 1 means no nucleus filtering."""
        if self.temperature == 0:
            return {"do_sample": False}
        return {"temperature": self.temperature, "top_k": self.top_k,
                "top_p": None if self.top_p == 1 else self.top_p}


class CompletionRequest(_Sampling):
    prompt: Any  # a string, a list of strings, a list of token ids, or a list of lists of token ids
    max_tokens: int = Field(16, ge=1)  # OpenAI's default for completions

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, prompt):
        def ids(x):
            return isinstance(x, list) and bool(x) and all(isinstance(i, int) and not isinstance(i, bool) for i in x)
        if isinstance(prompt, str) or ids(prompt):
            return [prompt]
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) or ids(p) for p in prompt):
            return prompt
        raise ValueError("give a string, a list of strings, a list of token ids or a list of lists of token ids")


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)  # unset: as many as the context has room for
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name for max_tokens


def parse(cls, body: bytes):
    """An HTTP body -> a validated request of type cls; raises APIError 400 naming the field."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(400, f"the request body is not UTF-8 (byte {e.start}); send JSON encoded as UTF-8",
                       param="body") from None
    try:
        return cls.model_validate_json(text)
    except ValidationError as e:
        raise _api_error(e) from None


def _api_error(e: ValidationError) -> APIError:
    err = e.errors(include_url=False)[0]
    if err["type"] == "json_invalid":
        return APIError(400, f"the request body is not valid JSON ({err['ctx']['error']})", param="body")
    if err["type"] == "model_type":
        return APIError(400, "the request body must be a JSON object", param="body")
    param = ".".join(str(part) for part in err["loc"]) or "body"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "this server does not support this parameter"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return APIError(400, f"{param}: {msg}", param=param)


def chat_prompt(messages: list[Message]) -> str:
    """The messages as one prompt for a base model, in the template of this module's docstring."""
    system = "".join(m.content + "\n\n" for m in messages if m.role == "system")
    turns = "".join(f"{m.role.capitalize()}: {m.content}\n" for m in messages if m.role != "system")
    return system + turns + "Assistant:"


def check_length(prompt_tokens: int, max_tokens: int, block_size: int, prompt_param: str, max_param: str):
    """A prompt and its completion must fit in the context together: GPT-2's positions end at block_size."""
    if prompt_tokens > block_size:
        raise APIError(400, f"{prompt_param}: the prompt has {prompt_tokens} tokens, more than the model's context "
                            f"of {block_size}; shorten it", param=prompt_param, code="context_length_exceeded")
    if prompt_tokens + max_tokens > block_size:
        raise APIError(400, f"{max_param}: the model's context is {block_size} tokens and the prompt has "
                            f"{prompt_tokens}, so {max_param} can be at most {block_size - prompt_tokens}, "
                            f"got {max_tokens}", param=max_param, code="context_length_exceeded")
