"""The reference TEMPURA prompts: protocol constants, byte-identical.

The released TEMPURA checkpoints were trained, and the paper's numbers made,
with these strings (the reference repository's `src/inference/prompts.py`),
whitespace included: never reformat them. `<start>`, `<end>` and
`<your_query>` are the reference's own placeholders (plain text, not
`str.format` fields); `TIME_INSTRUCTION` is a `str.format` template.
"""

# ruff: noqa: E501

from __future__ import annotations

# fmt: off
DVC = "\n            Partition and identify events by dividing the video into a series of non-overlapping segments,\n            determining the start and end time for each event, and arranging them in chronological order to ensure complete coverage of all video frames.\n            Each event should be accompanied by a detailed description. Please follow the format:\n            'From <start time1> to <end time1>, <detailed description1>.\n            \n\nFrom <start time2> to <end time2>, <detailed description2>.\n\n...'\n            "
MEP = ("Given the input video with the masked segment from <start> to <end>, \n please step-by-step reason and "
       "predict what might happen in the masked time segment based on the context of the video and give your "
       "answer in the following format: <think>[reasoning steps]</think><answer>So the description of the "
       "predicted event from <start> to <end> is: <predicted masked event description></answer>")
VTG_FT = 'Find the video segment that corresponds to the given textual query <your_query> and determine its start and end seconds.'
VHD_FT = "You are given a video from the QVHighlights dataset. Please find the highlight contents in the video described by a sentence query, determining the highlight timestamps and its saliency score on a scale from 1 to 5. The output format should be like: 'The highlight timestamps are in the 82, 84, 86, 88, 90, 92, 94, 96, 98, 100 seconds. Their saliency scores are 1.3, 1.7, 1.7, 1.7, 1.7, 1.3, 1.7, 2.3, 2.3, 2.3'. Now I will give you the sentence query: <your_query>. Please return the query-based highlight timestamps and salient scores."
TIME_INSTRUCTION = ("You are given a video sampled at {fps} frame per second, so input video frames are sampled at "
                    "{time_points} second sequentially, so in total the video is {duration:.2f} seconds long.\n ")
# TIME_INSTRUCTION's time_points: ", ".join(f"{t:.2f}" for t in timestamps); duration: timestamps[-1] + 1
# fmt: on
