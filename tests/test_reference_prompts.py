"""The reference prompts stay byte-identical to the reference repository's
`src/inference/prompts.py` (digests of the exact strings), and the paper
protocol sends them unchanged but for the query."""

import hashlib

import pytest

from tempura_jax import reference_prompts as rp
from tempura_jax.inference import tasks

SHA256 = {
    "VTG": "a1b966dc09620035031cf1324fa7ef990194a187418897ab7d7b12b46921b69b",
    "VTG_REFINE": "d7ffc08eb809f32564c938aa9b1e335418b7fea9f6cc42518681a6201c7a28c2",
    "VHD_REFINE": "1d1932b560fb914d44893092328aa163764ab9ed007ee1bece4b87795eb1c961",
}


@pytest.mark.parametrize("name", sorted(SHA256))
def test_reference_strings_are_byte_identical(name):
    assert hashlib.sha256(getattr(rp, name).encode()).hexdigest() == SHA256[name]


def test_refine_templates_take_the_reference_fields():
    text = rp.VTG_REFINE.format(dense_caption="C", query="Q", windows="[[1.0, 2.0]]",
                                min_window_duration=4.0)  # fmt: skip
    assert (
        '"relevant_windows": [[start_time, end_time]],\n}' in text
        and "at least 4.0 seconds" in text
    )
    text = rp.VHD_REFINE.format(duration=30.4, dense_caption="C", query="Q", initial_answer="A")
    assert "I have a 30-second video" in text and "between 0 and 30)" in text


def test_paper_protocol_sends_the_reference_prompts():
    assert tasks.for_protocol("grounding", "tempura_paper") == "vtg"
    assert tasks.for_protocol("grounding", "tempura_paper_ft") == "vtg_ft"
    assert tasks.for_protocol("highlight", "tempura_paper") == "vhd_ft"
    assert tasks.for_protocol("dense", "tempura_paper") == "dense"
    assert tasks.for_protocol("grounding") == "grounding"
    with pytest.raises(ValueError, match="unknown prompt protocol 'paper'"):
        tasks.for_protocol("grounding", "paper")
    query = 'a {person} says "hi"'
    assert tasks.get("vtg").text(query) == rp.VTG.replace("<your_query>", query)
    assert tasks.get("vhd_ft").text(query) == rp.VHD_FT.replace("<your_query>", query)
    # The JSON answer VTG asks for is read by the grounding parser.
    answer = '{ "query": "x", "relevant_windows": [ [2.5, 7.0], [9, 12] ] }'
    assert tasks.get("vtg").parse(answer) == {"windows": [[2.5, 7.0], [9.0, 12.0]]}
