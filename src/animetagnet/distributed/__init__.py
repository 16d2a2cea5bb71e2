"""Distributed batch tagging (optional extra `ray`): manifests, result shards and the Ray engine.

Nothing here imports Ray at module level; `ray_engine` imports it inside the functions that need it.
"""
