"""Pages people read: the catalog inspection before training and the evaluation report after it.

Statistics are computed as plain data (frames, dicts), figures drawn as PNGs, and both rendered through
one jinja2 base template (``templates/base.html``) into a self-contained HTML file.
"""
