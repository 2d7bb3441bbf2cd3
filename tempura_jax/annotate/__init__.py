"""VER-style annotation of raw videos with any OpenAI-compatible model
(`tempura-annotate`): the paper's pipeline (Sec. 4, S1), cached per stage,
resumable, shardable. Modules: `prompts` (the versioned prompt file),
`answers` (the JSON contract), `frames`/`grid` (1-FPS frames, static filter,
frame-sequence images), `client`, `store` (cache, atomic writes), `repair`,
`pipeline` (one video), `run` (a run), `output` (records, summary, merge),
`cli`."""
