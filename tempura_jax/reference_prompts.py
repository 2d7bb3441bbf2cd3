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
# VTG: the zero-shot Charades-STA instruction (JSON `relevant_windows`); `<your_query>` is replaced.
VTG = 'You are a highly capable AI assistant trained to analyze video content and accurately identify the relevant time intervals in response to natural language queries.\n\n            ### **Task Description**\n            Your goal is to perform **video temporal grounding** by identifying the start and end timestamps in a video that match a given user query.\n\n            ### **Guidelines**\n            1. **Comprehend Video Content**: Analyze the sequence of frames to understand the event described in the query.\n            2. **Understand Temporal Dynamics**: Consider motion, object interactions, and scene transitions to determine when the event occurs.\n            3. **Handle Multiple Occurrences**: The same query may appear **multiple times** throughout the video. Identify and return all relevant time intervals.\n            4. **Output Format**: Provide the results in **JSON format** as specified below.\n\n            ### **Expected Output JSON Format**\n            { "query": "<user query>", "relevant_windows": [ [<start time>, <end time>], [<start time>, <end time>], ... ] }\n            User Query: <your_query>\n            '
# The text-only second pass (str.format templates): VTG windows and VHD answers refined with the
# same video's dense caption.
VTG_REFINE = 'You are an intelligent video understanding assistant. I need your help to refine video temporal grounding results.\n\nI have a video with the following dense caption description of its content:\n{dense_caption}\n\nFor the query: "{query}"\n\n1. Find the most relevant time window for the query from the dense caption description.\n2. If you cannot find it, use the initial system identified time windows:\n{windows}\n3. Merge the time windows if they are the same or close event for the query.\n4. IMPORTANT: Each time window MUST be at least {min_window_duration} seconds long. If a relevant action is shorter, extend the window to include more context.\n5. Do not output empty relevant_windows.\n\nPlease output your answer in the following JSON format:\n{{\n    "relevant_windows": [[start_time, end_time]],\n}}\n'
VHD_REFINE = 'You are an intelligent video understanding assistant. I need your help to refine video highlight detection results.\n\nI have a {duration:.0f}-second video with the following dense caption description of its content:\n{dense_caption}\n\nThe user query is: "{query}"\n\nAn initial system produced this answer:\n{initial_answer}\n\nUsing the dense caption, decide which 2-second clips of the video match the query. List their timestamps (even numbers of seconds between 0 and {duration:.0f}) and give each a saliency score from 1 to 5 (higher = more relevant). Keep the initial answer when the caption does not contradict it.\n\nAnswer in exactly this format and nothing else:\n\'The highlight timestamps are in the <t1>, <t2>, ... seconds. Their saliency scores are <s1>, <s2>, ...\'\n'
# fmt: on
