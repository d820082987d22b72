"""What the analyses become: Markdown, figures, the HTML page, W&B uploads, and the writers of the
report (:mod:`.report`), the recovery table (:mod:`.recovery`) and the mask analysis
(:mod:`.masks`). Render imports the computation in :mod:`deepcuts.analysis`, never the reverse."""
