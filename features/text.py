"""Turn what a request carries (a prompt string or OpenAI chat messages) into one `Prompt`.

Everything downstream — features, cost estimates, capability filters, the train/test split —
reads a `Prompt`, so the two input shapes are reconciled exactly once, here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

try:  # the compiled scan; optional like the rest of features/_compiled.c
    from features import _compiled
except ImportError:  # pragma: no cover - exercised by the no-compiler install
    _compiled = None

__all__ = ["Prompt", "PromptError", "from_messages", "has_surrogates", "normalize"]

# Content-part types that carry an image (OpenAI chat format, plus the older "image" spelling).
_IMAGE_PART_TYPES = frozenset({"image_url", "image", "input_image"})
_TEXT_PART_TYPES = frozenset({"text", "input_text"})


class PromptError(ValueError):
    """A prompt or messages value has the wrong shape. `field` names the offending part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Prompt:
    """The routing-relevant view of one request.

    `text` is the user-visible text joined in order (system, user, assistant turns); `last_user`
    is the final user turn, which is usually what decides the difficulty of the answer.
    """

    text: str
    last_user: str
    turns: int = 1
    images: int = 0
    has_system: bool = False

    @property
    def needs_vision(self) -> bool:
        return self.images > 0


def normalize(prompt: Any = None, messages: Any = None, *, field: str = "") -> Prompt:
    """Build a `Prompt` from exactly one of `prompt` (a string) or `messages` (chat format).

    >>> normalize("What is 2+2?").turns
    1
    >>> normalize(messages=[{"role": "user", "content": "hi"}]).last_user
    'hi'
    """
    prefix = f"{field}." if field else ""
    if prompt is not None and messages is not None:
        raise PromptError(f"{prefix}prompt", "give either 'prompt' or 'messages', not both")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise PromptError(f"{prefix}prompt", f"must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise PromptError(f"{prefix}prompt", "must not be empty")
        return Prompt(text=prompt, last_user=prompt)
    if messages is not None:
        return from_messages(messages, field=f"{prefix}messages")
    raise PromptError(f"{prefix}prompt", "one of 'prompt' or 'messages' is required")


def _content_text(content: Any, field: str) -> tuple[str, int]:
    """Text and image count of one message's `content` (a string or a list of parts)."""
    if content is None:
        return "", 0
    if isinstance(content, str):
        return content, 0
    if not isinstance(content, Sequence) or isinstance(content, bytes | bytearray):
        raise PromptError(field, "must be a string or a list of content parts")
    texts: list[str] = []
    images = 0
    for i, part in enumerate(content):
        if not isinstance(part, Mapping):
            raise PromptError(f"{field}[{i}]", "a content part must be an object")
        kind = part.get("type")
        if kind in _TEXT_PART_TYPES:
            text = part.get("text")
            if not isinstance(text, str):
                raise PromptError(f"{field}[{i}].text", "must be a string")
            texts.append(text)
        elif kind in _IMAGE_PART_TYPES:
            images += 1
        elif not isinstance(kind, str):
            raise PromptError(f"{field}[{i}].type", "is required and must be a string")
        # Other part types (audio, files) carry no text we can route on; they are not errors.
    return "\n".join(texts), images


def from_messages(messages: Any, *, field: str = "messages") -> Prompt:
    """Build a `Prompt` from OpenAI-style chat messages."""
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes | bytearray):
        raise PromptError(field, "must be a list of chat messages")
    if not messages:
        raise PromptError(field, "must contain at least one message")
    parts: list[str] = []
    last_user = ""
    images = 0
    user_turns = 0
    has_system = False
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise PromptError(f"{field}[{i}]", "a message must be an object")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise PromptError(f"{field}[{i}].role", "is required and must be a string")
        text, n_images = _content_text(message.get("content"), f"{field}[{i}].content")
        images += n_images
        if role in ("system", "developer"):
            has_system = True
        if role == "user":
            user_turns += 1
            last_user = text
        if text:
            parts.append(text)
    joined = "\n\n".join(parts)
    if not joined.strip() and images == 0:
        raise PromptError(field, "the messages contain no text and no image")
    return Prompt(
        text=joined,
        last_user=last_user or joined,
        turns=max(user_turns, 1),
        images=images,
        has_system=has_system,
    )


def _has_surrogates_python(text: str) -> bool:
    """True when `text` holds a surrogate code point (U+D800 to U+DFFF).

    JSON can carry one ("\\ud800") and Python keeps it, but such text has no UTF-8 form, so it
    can be neither logged nor forwarded. The reference for `_compiled.has_surrogates`, which
    answers without building the bytes (a 100 KB prompt: ~6 against ~55 µs).

    >>> has_surrogates("caf\\u00e9 \\U0001f600"), has_surrogates("x\\ud800")
    (False, True)
    """
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


has_surrogates = _has_surrogates_python if _compiled is None else _compiled.has_surrogates
