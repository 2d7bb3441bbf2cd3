"""The browser demo (tempura-demo): a page, its JSON API and the timeline plot."""
