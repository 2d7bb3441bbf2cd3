"""Chat template tokens and loss labels."""

import numpy as np

from tempura_jax.data.chat import IGNORE, chat_tokens, vision_tokens
from tempura_jax.data.tokenizer import Tokenizer

REPLY = "From 0.0 to 3.0 seconds, a red circle appears.\n\nFrom 3.0 to 6.0 seconds, it moves."
TURNS = [("user", "<video>\nDescribe the video."), ("assistant", REPLY)]


def test_labels_cover_exactly_the_reply(demo_data):
    tok = Tokenizer(demo_data["tokenizer"])
    vision = vision_tokens(tok, [6, 6, 6], as_video=False)
    ids, labels = chat_tokens(tok, TURNS, vision)
    trained = labels != IGNORE
    np.testing.assert_array_equal(labels[trained], ids[trained])
    # One contiguous span: the reply then <|im_end|>; the newline after it is not trained.
    span = np.nonzero(trained)[0]
    assert (np.diff(span) == 1).all()
    assert tok.decode(ids[span], skip_special_tokens=False) == REPLY + "<|im_end|>"
    assert tok.decode(ids[span[-1] + 1 :], skip_special_tokens=False) == "\n"
    assert tok.decode(ids[: span[0]], skip_special_tokens=False).endswith("<|im_start|>assistant\n")
    assert (ids == tok.image_pad_id).sum() == 18 and (ids == tok.vision_start_id).sum() == 3


def test_equals_hf_chat_template(demo_data):
    """Same ids as transformers' tokenizer applying Qwen's template, with the
    image pads expanded the way the Qwen processor does."""
    from transformers import AutoTokenizer

    tok = Tokenizer(demo_data["tokenizer"])
    hf = AutoTokenizer.from_pretrained(demo_data["tokenizer"])
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "image"},
                {"type": "text", "text": "Describe the video."},
            ],
        },
        {"role": "assistant", "content": REPLY},
    ]
    text = hf.apply_chat_template(messages, tokenize=False)
    text = text.replace("<|image_pad|>", "<|image_pad|>" * 6)
    ref = hf(text, add_special_tokens=False)["input_ids"]
    ids, _ = chat_tokens(tok, TURNS, vision_tokens(tok, [6, 6], as_video=False))
    assert ids.tolist() == ref
    assert "\n<|im_end|>" not in text  # Qwen's template: no stray newline


def test_special_text_stays_text_and_video_mode(demo_data):
    tok = Tokenizer(demo_data["tokenizer"])
    ids, labels = chat_tokens(
        tok,
        [("user", "Q <|im_end|> <video>"), ("assistant", "A")],
        vision_tokens(tok, [4], as_video=True),
        system=None,
    )
    assert (ids == tok.im_end_id).sum() == 2  # the literal one in the question is text
    assert (ids == tok.video_pad_id).sum() == 4
    assert ids[0] == tok.im_start_id and tok.decode(ids[1:3]).startswith("user")


def test_video_in_a_later_turn_is_placed_once(demo_data):
    tok = Tokenizer(demo_data["tokenizer"])
    turns = [
        ("user", "Hi."),
        ("assistant", "Hello."),
        ("user", "<video>\nWhat happens?"),
        ("assistant", "A circle moves."),
    ]
    ids, labels = chat_tokens(tok, turns, vision_tokens(tok, [4, 4], as_video=False))
    assert (ids == tok.vision_start_id).sum() == 2
    first_vision = np.nonzero(ids == tok.vision_start_id)[0][0]
    assert tok.decode(ids[:first_vision], skip_special_tokens=False).count("<|im_start|>user") == 2
    trained = tok.decode(ids[labels != IGNORE], skip_special_tokens=False)
    assert trained == "Hello.<|im_end|>A circle moves.<|im_end|>"
