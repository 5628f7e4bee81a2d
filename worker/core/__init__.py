"""The core: what a rebook is and how it moves (models, states, keys, store, flow, Lua).

No Celery, no HTTP: the flow talks to the upstream and the tokens through the Protocols it
declares (`worker.core.flow.Upstream`, `Tokens`) and to the queue through `Dispatcher`.
"""
