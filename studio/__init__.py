"""The web studio: watch jobs, browse, search, label and curate (docs/studio.md).

A client of the gateway like any other: it holds no state of its own beyond caches, reads every
file through the gateway's API, and runs as its own process (`sfhq serve studio`).
"""
