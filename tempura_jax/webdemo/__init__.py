"""The web demo (tempura-demo): a Gradio page (ui), the model session, the timeline plot."""
