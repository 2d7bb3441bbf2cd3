"""Inference: generation (`generate`), checkpoint -> answers (`infer`), task
prompts and parsers (`tasks`), and the OpenAI-compatible server (`serve`)."""
