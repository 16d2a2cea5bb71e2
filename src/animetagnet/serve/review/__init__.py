"""`animetagnet review DIR`: correct a folder's captions beside the model's suggestions, and feed the corrections back.

session.py owns a review (scan, suggestions, filters, edits, undo/redo), store.py its SQLite
journal, captions.py one caption file, vocab.py autocompletion, routes.py the HTTP API and the
page, report.py `review-report` (the suggestions' precision/recall as judged, re-calibrated
thresholds). docs/review.md describes the whole loop.
"""
