"""A live web page of one swarm for its operators (`swarmnode dashboard`).

`model` folds the contract's events (and the nodes' Prometheus metrics, where reachable)
into what the page shows; `server` serves the page, its script and a JSON snapshot that the
script polls; `static/` holds the page, shipped inside the package so that nothing is
loaded from the internet (docs/architecture.md#the-live-dashboard).
"""
