"""A Qwen tokenizer read from a local HF directory (`tokenizer.json`), with
the chat-format special tokens resolved to ids and checked against the model."""

from __future__ import annotations

from pathlib import Path

from tempura_jax.config import ModelConfig

SPECIAL = {
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "vision_start": "<|vision_start|>",
    "vision_end": "<|vision_end|>",
    "image_pad": "<|image_pad|>",
    "video_pad": "<|video_pad|>",
    "pad": "<|endoftext|>",
}


class TokenizerError(ValueError):
    pass


class Tokenizer:
    """Content text is encoded with special-token parsing off, so a caption
    that happens to contain `<|im_end|>` stays text; the template inserts the
    real special tokens by id."""

    def __init__(self, directory: str | Path):
        import tokenizers

        self.directory = Path(directory)
        path = self.directory / "tokenizer.json"
        if not path.exists():
            raise TokenizerError(f"{path}: not found (a local HF tokenizer directory is needed)")
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise TokenizerError(f"{path}: unreadable tokenizer ({e})") from e
        self._tok.encode_special_tokens = True
        self.ids: dict[str, int] = {}
        for name, token in SPECIAL.items():
            i = self._tok.token_to_id(token)
            if i is None:
                raise TokenizerError(f"{path}: the tokenizer has no {token} token")
            self.ids[name] = i

    def __getattr__(self, name: str) -> int:
        ids = self.__dict__.get("ids", {})
        if name.endswith("_id") and name[:-3] in ids:
            return ids[name[:-3]]
        raise AttributeError(name)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids if text else []

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def check(self, cfg: ModelConfig) -> None:
        """The model and tokenizer must agree on the vision token ids."""
        pairs = {
            "image_pad": cfg.image_token_id,
            "video_pad": cfg.video_token_id,
            "vision_start": cfg.vision_start_token_id,
            "vision_end": cfg.vision_end_token_id,
        }
        bad = [
            f"{SPECIAL[k]}: tokenizer {self.ids[k]}, model {v}"
            for k, v in pairs.items()
            if self.ids[k] != v
        ]
        if bad:
            raise TokenizerError(
                f"{self.directory}: tokenizer and model disagree: {'; '.join(bad)}"
            )
        if self.vocab_size > cfg.text.vocab_size:
            raise TokenizerError(
                f"{self.directory}: tokenizer has {self.vocab_size} tokens, "
                f"model vocab is {cfg.text.vocab_size}"
            )
